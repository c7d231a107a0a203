//! Routing: which pool a job goes to, and why. [`HybridRouter`] applies, in order: the
//! job's own pool, the privacy flag, the operators' force switches, the strategy (cost,
//! quality, privacy-first, balanced) with the job's budget, liveness, and spill-over when
//! a pool's queue lag passes a threshold (never breaking privacy). Every decision carries
//! its reasons. Once there are quality estimates for both pools (the router's memory of
//! similar past jobs, the SONA predictor filling a pool it lacks: `RouteInput::predicted`),
//! they decide the balanced and quality strategies instead of the complexity class alone.

use std::collections::HashMap;

use qefleet_learn::PoolEstimates;
use qefleet_schemas::{
    Complexity, ComplexityReport, ErrorCode, ErrorReply, JobSpec, Pool, RouteDecision, Strategy,
};
use qefleet_shared::subjects::job_subject;

/// How many live workers each pool has right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LivePools(pub HashMap<Pool, usize>);

impl LivePools {
    pub fn count(&self, pool: Pool) -> usize {
        self.0.get(&pool).copied().unwrap_or(0)
    }
}

/// Queue lag per pool: jobs waiting plus jobs delivered but not acknowledged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolLag(pub HashMap<Pool, u64>);

impl PoolLag {
    pub fn of(&self, pool: Pool) -> u64 {
        self.0.get(&pool).copied().unwrap_or(0)
    }
}

/// The operators' switch: route by strategy, or force every job local or to the cloud
/// (a rollback). Set by `--route-mode` and at run time by `qefleet route-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RouteMode {
    #[default]
    Auto,
    ForceLocal,
    ForceCloud,
}

impl RouteMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteMode::Auto => "auto",
            RouteMode::ForceLocal => "force-local",
            RouteMode::ForceCloud => "force-cloud",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "auto" => Some(RouteMode::Auto),
            "force-local" => Some(RouteMode::ForceLocal),
            "force-cloud" => Some(RouteMode::ForceCloud),
            _ => None,
        }
    }
}

/// Everything a router may look at.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub job: &'a JobSpec,
    pub complexity: &'a ComplexityReport,
    pub live: &'a LivePools,
    pub lag: &'a PoolLag,
    pub mode: RouteMode,
    /// Why the job may not spend on the cloud today (a daily budget is spent), if so.
    pub budget_exhausted: Option<&'a str>,
    /// The SONA quality predictor's estimates for this job, once it has learned enough.
    pub predicted: Option<&'a PoolEstimates>,
}

/// Decides the pool of a job. Must be cheap: it runs on every submission.
pub trait Router: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn route(&self, input: RouteInput<'_>) -> Result<RouteDecision, ErrorReply>;
    /// Whether a job whose local result missed the quality gate may go on to the cloud
    /// pool: the decision when it may, the reason it stays local when not.
    fn escalate(&self, input: RouteInput<'_>) -> Result<RouteDecision, String>;
}

/// Privacy first, then the switches, the strategy, liveness and spill-over: a pool nobody
/// serves is only chosen when the job insists on it.
#[derive(Debug, Clone, Copy)]
pub struct HybridRouter {
    pub default_strategy: Strategy,
    /// A pool whose lag reaches this spills new jobs to the other pool, when that one is
    /// live, below it, and the job and strategy allow.
    pub spill_lag: u64,
    /// The quality the cloud must be predicted to add over local for the balanced strategy
    /// to pay for it.
    pub min_gain: f64,
    /// Share of balanced and quality jobs sent to the other pool than the one chosen (when
    /// that pool may take them), so the estimates keep learning both; picked by a hash of
    /// the job id, so a resubmission goes the same way. 0 when learned routing is off, and
    /// then no untried pool is tried either.
    pub explore: f64,
}

impl Default for HybridRouter {
    fn default() -> Self {
        Self {
            default_strategy: Strategy::Balanced,
            spill_lag: 200,
            min_gain: DEFAULT_MIN_GAIN,
            explore: DEFAULT_EXPLORE,
        }
    }
}

/// Default of [`HybridRouter::min_gain`].
pub const DEFAULT_MIN_GAIN: f64 = 0.1;

/// Default of [`HybridRouter::explore`].
pub const DEFAULT_EXPLORE: f64 = 0.05;

/// Whether the job with this id is one of the `share` explored: FNV-1a of the id, so the
/// choice is stable across schedulers and resubmissions.
fn explored(job_id: &str, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ((hash % 10_000) as f64) < share * 10_000.0
}

/// Both pools' estimates, when there are both, and where they come from.
fn both(predicted: Option<&PoolEstimates>) -> Option<(f64, f64, String)> {
    let p = predicted?;
    let source = match (p.recalled, p.version) {
        (0, v) => format!("the SONA predictor (adapter v{v})"),
        (n, 0) => format!("the router's memory ({n} similar past jobs)"),
        (n, v) => {
            format!(
                "the router's memory ({n} similar past jobs) and the SONA predictor (adapter v{v})"
            )
        }
    };
    Some((p.local?, p.cloud?, source))
}

impl Router for HybridRouter {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn route(&self, input: RouteInput<'_>) -> Result<RouteDecision, ErrorReply> {
        let RouteInput {
            job,
            complexity,
            live,
            lag,
            mode,
            budget_exhausted,
            predicted,
        } = input;
        let strategy = job.strategy.unwrap_or(self.default_strategy);
        let mut reasons = Vec::new();
        let pool = if let Some(pool) = job.pool {
            if let (Pool::Cloud, Some(why)) = (pool, budget_exhausted) {
                return Err(ErrorReply {
                    code: ErrorCode::BudgetExhausted,
                    message: format!(
                        "the job insists on the cloud pool, but {why}; nothing was queued"
                    ),
                });
            }
            if pool == Pool::Maint || (pool == Pool::Cloud && job.local_only) {
                return Err(ErrorReply {
                    code: ErrorCode::Unroutable,
                    message: format!("pool {pool} cannot take this job"),
                });
            }
            reasons.push(format!("job insists on pool {pool}"));
            if live.count(pool) == 0 {
                reasons.push(format!(
                    "no live {pool} worker now: the job waits in the queue until one starts"
                ));
            }
            pool
        } else if job.local_only {
            reasons.push("local_only: the privacy flag keeps the job on local workers".into());
            Pool::Local
        } else if mode == RouteMode::ForceLocal {
            reasons.push("force-local switch: every job runs locally".into());
            Pool::Local
        } else if mode == RouteMode::ForceCloud {
            if let Some(why) = budget_exhausted {
                reasons.push(format!("force-cloud switch, but {why}: routed local"));
                Pool::Local
            } else if job.budget.max_usd == Some(0.0) {
                reasons.push("force-cloud switch, but budget.max_usd is 0: routed local".into());
                Pool::Local
            } else if live.count(Pool::Cloud) == 0 {
                reasons.push("force-cloud switch, but no live cloud worker: routed local".into());
                Pool::Local
            } else {
                reasons
                    .push("force-cloud switch: every job that may leave goes to the cloud".into());
                Pool::Cloud
            }
        } else {
            let wants_cloud = match (strategy, both(predicted)) {
                (Strategy::PrivacyFirst, _) => {
                    reasons.push("strategy privacy-first: local workers only".into());
                    false
                }
                (Strategy::Cost, _) => {
                    reasons.push("strategy cost: local workers cost least".into());
                    false
                }
                (Strategy::Quality, Some((local, cloud, source))) if local >= cloud => {
                    reasons.push(format!(
                        "strategy quality: {source} expects {local:.2} local against {cloud:.2} cloud: local does as well"
                    ));
                    false
                }
                (Strategy::Quality, _) => {
                    reasons.push("strategy quality: prefers the cloud engines".into());
                    true
                }
                (Strategy::Balanced, Some((local, cloud, source))) => {
                    let gain = cloud - local;
                    let pays = gain >= self.min_gain;
                    reasons.push(format!(
                        "strategy balanced: {source} expects {local:.2} local against {cloud:.2} cloud: {}",
                        if pays {
                            format!("a gain of {gain:.2} >= {:.2} pays for the cloud", self.min_gain)
                        } else {
                            format!("a gain of {gain:.2} < {:.2} stays local", self.min_gain)
                        }
                    ));
                    pays
                }
                (Strategy::Balanced, None) => {
                    let hard = matches!(
                        complexity.class,
                        Complexity::Complex | Complexity::VeryComplex
                    );
                    reasons.push(format!(
                        "strategy balanced: {} module (score {}) {}",
                        complexity.class,
                        complexity.score,
                        if hard { "prefers cloud" } else { "stays local" }
                    ));
                    hard
                }
            };
            // Once the predictor has learned a pool, a few jobs keep teaching it the other.
            // The strategies that decide by estimates need outcomes of both pools to learn
            // from: without exploring, a quality router that starts on the cloud would never
            // see local do as well.
            let by_estimates = matches!(strategy, Strategy::Balanced | Strategy::Quality);
            let other = if wants_cloud {
                Pool::Local
            } else {
                Pool::Cloud
            };
            // The memory knows jobs like this one on the chosen pool only: the other's
            // figure is a guess until it has run a few of them there (MIN_RECALLED).
            let untried = by_estimates
                && self.explore > 0.0
                && predicted.is_some_and(|p| p.untried == Some(other));
            let explore = by_estimates
                && predicted.is_some()
                && explored(job.job_id.as_deref().unwrap_or_default(), self.explore);
            let wants_cloud = if untried {
                reasons.push(format!(
                    "trying {other}: the router's memory holds jobs like this one only on the other pool"
                ));
                !wants_cloud
            } else if explore {
                reasons.push(format!(
                    "exploring: {:.0}% of balanced and quality jobs try the other pool so the estimates keep learning both",
                    self.explore * 100.0
                ));
                !wants_cloud
            } else {
                wants_cloud
            };
            let may_spend = job.budget.max_usd != Some(0.0) && budget_exhausted.is_none();
            let spills = matches!(strategy, Strategy::Balanced | Strategy::Quality);
            if !wants_cloud {
                let local_lag = lag.of(Pool::Local);
                if spills
                    && may_spend
                    && local_lag >= self.spill_lag
                    && live.count(Pool::Cloud) > 0
                    && lag.of(Pool::Cloud) < self.spill_lag
                {
                    reasons.push(format!(
                        "local queue lag {local_lag} >= {}: spilled over to the cloud",
                        self.spill_lag
                    ));
                    Pool::Cloud
                } else {
                    Pool::Local
                }
            } else if let Some(why) = budget_exhausted {
                reasons.push(format!("{why}: routed local"));
                Pool::Local
            } else if !may_spend {
                reasons.push("budget.max_usd is 0: cloud engines cost money, routed local".into());
                Pool::Local
            } else if live.count(Pool::Cloud) == 0 {
                reasons.push(
                    "no live cloud worker (none configured, or every provider's circuit breaker is open): routed local".into(),
                );
                Pool::Local
            } else if lag.of(Pool::Cloud) >= self.spill_lag
                && live.count(Pool::Local) > 0
                && lag.of(Pool::Local) < self.spill_lag
            {
                reasons.push(format!(
                    "cloud queue lag {} >= {}: spilled over to local workers",
                    lag.of(Pool::Cloud),
                    self.spill_lag
                ));
                Pool::Local
            } else {
                Pool::Cloud
            }
        };
        if job.pool.is_none() && pool == Pool::Local && live.count(Pool::Local) == 0 {
            reasons.push(
                "no live local worker now: the job waits in the queue until one starts".into(),
            );
        }
        Ok(RouteDecision {
            pool,
            subject: job_subject(pool, complexity.class),
            router: self.name().to_string(),
            strategy,
            reasons,
        })
    }

    fn escalate(&self, input: RouteInput<'_>) -> Result<RouteDecision, String> {
        if let Some(why) = self.escalation_refused(&input) {
            return Err(why);
        }
        let mut reasons = vec!["escalated: the local result missed the quality gate".into()];
        if input.lag.of(Pool::Cloud) >= self.spill_lag {
            reasons.push(format!(
                "cloud queue lag {} >= {}: the escalation waits its turn",
                input.lag.of(Pool::Cloud),
                self.spill_lag
            ));
        }
        Ok(RouteDecision {
            pool: Pool::Cloud,
            subject: job_subject(Pool::Cloud, input.complexity.class),
            router: self.name().to_string(),
            strategy: input.job.strategy.unwrap_or(self.default_strategy),
            reasons,
        })
    }
}

impl HybridRouter {
    fn escalation_refused(&self, input: &RouteInput<'_>) -> Option<String> {
        let job = input.job;
        let strategy = job.strategy.unwrap_or(self.default_strategy);
        if job.local_only {
            return Some("local_only: the privacy flag keeps the job on local workers".into());
        }
        if job.pool == Some(Pool::Local) {
            return Some("the job insists on the local pool".into());
        }
        if strategy == Strategy::PrivacyFirst {
            return Some("strategy privacy-first: local workers only".into());
        }
        if input.mode == RouteMode::ForceLocal {
            return Some("force-local switch: every job runs locally".into());
        }
        if let Some(why) = input.budget_exhausted {
            return Some(why.to_string());
        }
        if job.budget.max_usd == Some(0.0) {
            return Some("budget.max_usd is 0: cloud engines cost money".into());
        }
        if input.live.count(Pool::Cloud) == 0 {
            return Some(
                "no live cloud worker (none configured, or every provider's circuit breaker is open)"
                    .into(),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::complexity::analyze;

    fn live(local: usize, cloud: usize) -> LivePools {
        LivePools(HashMap::from([(Pool::Local, local), (Pool::Cloud, cloud)]))
    }

    fn route(job: &JobSpec, pools: &LivePools, class: Complexity) -> RouteDecision {
        let mut complexity = analyze(&job.source).expect("source").report;
        complexity.class = class;
        HybridRouter::default()
            .route(RouteInput {
                job,
                complexity: &complexity,
                live: pools,
                lag: &PoolLag::default(),
                mode: RouteMode::Auto,
                budget_exhausted: None,
                predicted: None,
            })
            .expect("routed")
    }

    fn job() -> JobSpec {
        JobSpec::python("m", "def f():\n    return 1\n")
    }

    #[test]
    fn balanced_sends_complex_jobs_to_live_cloud_workers() {
        let d = route(&job(), &live(1, 1), Complexity::Complex);
        assert_eq!(d.pool, Pool::Cloud);
        assert_eq!(d.subject, "qe.jobs.cloud.complex");
        let d = route(&job(), &live(1, 1), Complexity::Simple);
        assert_eq!(d.pool, Pool::Local);
    }

    #[test]
    fn a_pool_without_workers_is_avoided_and_the_reason_given() {
        let d = route(&job(), &live(1, 0), Complexity::VeryComplex);
        assert_eq!(d.pool, Pool::Local);
        assert!(
            d.reasons.iter().any(|r| r.contains("no live cloud worker")),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn a_job_that_insists_gets_its_pool_even_unserved() {
        let mut j = job();
        j.pool = Some(Pool::Cloud);
        let d = route(&j, &live(1, 0), Complexity::Simple);
        assert_eq!(d.pool, Pool::Cloud);
        assert!(
            d.reasons.iter().any(|r| r.contains("waits")),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn privacy_and_budget_keep_jobs_local() {
        let mut j = job();
        j.local_only = true;
        assert_eq!(
            route(&j, &live(1, 1), Complexity::VeryComplex).pool,
            Pool::Local
        );
        let mut j = job();
        j.budget.max_usd = Some(0.0);
        j.strategy = Some(Strategy::Quality);
        assert_eq!(route(&j, &live(1, 1), Complexity::Simple).pool, Pool::Local);
        let mut j = job();
        j.strategy = Some(Strategy::Quality);
        assert_eq!(route(&j, &live(1, 1), Complexity::Simple).pool, Pool::Cloud);
    }

    fn route_with(
        j: &JobSpec,
        pools: &LivePools,
        lag: &[(Pool, u64)],
        mode: RouteMode,
        class: Complexity,
    ) -> RouteDecision {
        let mut complexity = analyze(&j.source).expect("source").report;
        complexity.class = class;
        HybridRouter {
            spill_lag: 100,
            ..HybridRouter::default()
        }
        .route(RouteInput {
            job: j,
            complexity: &complexity,
            live: pools,
            lag: &PoolLag(lag.iter().copied().collect()),
            mode,
            budget_exhausted: None,
            predicted: None,
        })
        .expect("routed")
    }

    #[test]
    fn the_force_switches_move_every_job_except_private_ones() {
        let simple = route_with(
            &job(),
            &live(1, 1),
            &[],
            RouteMode::ForceCloud,
            Complexity::Simple,
        );
        assert_eq!(simple.pool, Pool::Cloud);
        assert!(
            simple
                .reasons
                .iter()
                .any(|r| r.contains("force-cloud switch")),
            "{:?}",
            simple.reasons
        );
        let hard = route_with(
            &job(),
            &live(1, 1),
            &[],
            RouteMode::ForceLocal,
            Complexity::VeryComplex,
        );
        assert_eq!(hard.pool, Pool::Local);
        assert!(hard
            .reasons
            .iter()
            .any(|r| r.contains("force-local switch")));
        let mut private = job();
        private.local_only = true;
        let d = route_with(
            &private,
            &live(1, 1),
            &[],
            RouteMode::ForceCloud,
            Complexity::Simple,
        );
        assert_eq!(d.pool, Pool::Local, "force-cloud moved a local_only job");
        // A rollback to the cloud with no cloud worker does not strand jobs.
        let d = route_with(
            &job(),
            &live(1, 0),
            &[],
            RouteMode::ForceCloud,
            Complexity::Simple,
        );
        assert_eq!(d.pool, Pool::Local);
        assert!(d.reasons.iter().any(|r| r.contains("no live cloud worker")));
        let mut free = job();
        free.budget.max_usd = Some(0.0);
        assert_eq!(
            route_with(
                &free,
                &live(1, 1),
                &[],
                RouteMode::ForceCloud,
                Complexity::Simple
            )
            .pool,
            Pool::Local
        );
    }

    #[test]
    fn a_saturated_pool_spills_over_when_privacy_and_strategy_allow() {
        let busy_local = [(Pool::Local, 150), (Pool::Cloud, 3)];
        let d = route_with(
            &job(),
            &live(2, 1),
            &busy_local,
            RouteMode::Auto,
            Complexity::Simple,
        );
        assert_eq!(d.pool, Pool::Cloud);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("local queue lag 150 >= 100: spilled over")),
            "{:?}",
            d.reasons
        );
        // Never a private job, never under cost or privacy-first, never to a pool as busy.
        let mut private = job();
        private.local_only = true;
        assert_eq!(
            route_with(
                &private,
                &live(2, 1),
                &busy_local,
                RouteMode::Auto,
                Complexity::Simple
            )
            .pool,
            Pool::Local
        );
        for strategy in [Strategy::Cost, Strategy::PrivacyFirst] {
            let mut j = job();
            j.strategy = Some(strategy);
            assert_eq!(
                route_with(
                    &j,
                    &live(2, 1),
                    &busy_local,
                    RouteMode::Auto,
                    Complexity::Simple
                )
                .pool,
                Pool::Local,
                "{strategy:?}"
            );
        }
        let both_busy = [(Pool::Local, 150), (Pool::Cloud, 150)];
        assert_eq!(
            route_with(
                &job(),
                &live(2, 1),
                &both_busy,
                RouteMode::Auto,
                Complexity::Simple
            )
            .pool,
            Pool::Local
        );
        assert_eq!(
            route_with(
                &job(),
                &live(2, 0),
                &busy_local,
                RouteMode::Auto,
                Complexity::Simple
            )
            .pool,
            Pool::Local
        );
        // And back: a saturated cloud pool sends complex jobs to idle local workers.
        let busy_cloud = [(Pool::Local, 0), (Pool::Cloud, 400)];
        let d = route_with(
            &job(),
            &live(1, 1),
            &busy_cloud,
            RouteMode::Auto,
            Complexity::Complex,
        );
        assert_eq!(d.pool, Pool::Local);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("cloud queue lag 400 >= 100")),
            "{:?}",
            d.reasons
        );
        // Below the threshold nothing moves.
        let calm = [(Pool::Local, 99), (Pool::Cloud, 0)];
        assert_eq!(
            route_with(
                &job(),
                &live(1, 1),
                &calm,
                RouteMode::Auto,
                Complexity::Simple
            )
            .pool,
            Pool::Local
        );
        assert_eq!(RouteMode::parse("force-cloud"), Some(RouteMode::ForceCloud));
        assert_eq!(RouteMode::parse("cloud"), None);
    }

    #[test]
    fn a_spent_daily_budget_keeps_jobs_off_the_cloud_and_refuses_those_that_insist() {
        let router = HybridRouter::default();
        let complexity = analyze(&job().source).expect("source").report;
        let live = LivePools(HashMap::from([(Pool::Local, 1), (Pool::Cloud, 1)]));
        let lag = PoolLag::default();
        let route = |j: &JobSpec, mode| {
            router.route(RouteInput {
                job: j,
                complexity: &complexity,
                live: &live,
                lag: &lag,
                mode,
                budget_exhausted: Some("tenant acme spent $1.00 of its $1.00 daily cloud budget"),
                predicted: None,
            })
        };
        let mut quality = job();
        quality.strategy = Some(Strategy::Quality);
        let d = route(&quality, RouteMode::Auto).expect("routed");
        assert_eq!(d.pool, Pool::Local);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("daily cloud budget: routed local")),
            "{:?}",
            d.reasons
        );
        assert_eq!(
            route(&job(), RouteMode::ForceCloud).expect("routed").pool,
            Pool::Local
        );
        let mut insists = job();
        insists.pool = Some(Pool::Cloud);
        let err = route(&insists, RouteMode::Auto).expect_err("refused");
        assert_eq!(err.code, ErrorCode::BudgetExhausted);
        assert!(
            err.message.contains("spent $1.00 of its $1.00"),
            "{}",
            err.message
        );
    }

    #[test]
    fn escalation_goes_to_a_live_cloud_unless_privacy_switches_or_money_say_no() {
        let router = HybridRouter::default();
        let complexity = analyze(&job().source).expect("source").report;
        let lag = PoolLag::default();
        let escalate = |j: &JobSpec, pools: &LivePools, mode, exhausted: Option<&str>| {
            router.escalate(RouteInput {
                job: j,
                complexity: &complexity,
                live: pools,
                lag: &lag,
                mode,
                budget_exhausted: exhausted,
                predicted: None,
            })
        };
        let d = escalate(&job(), &live(1, 1), RouteMode::Auto, None).expect("escalated");
        assert_eq!(d.pool, Pool::Cloud);
        assert!(d.subject.starts_with("qe.jobs.cloud."), "{}", d.subject);
        let refused = |j: &JobSpec, pools: &LivePools, mode, exhausted| {
            escalate(j, pools, mode, exhausted).expect_err("stays local")
        };
        let mut private = job();
        private.local_only = true;
        // Privacy holds even when the operators force everything to the cloud.
        let why = refused(&private, &live(1, 1), RouteMode::ForceCloud, None);
        assert!(why.contains("local_only"), "{why}");
        let mut privacy_first = job();
        privacy_first.strategy = Some(Strategy::PrivacyFirst);
        assert!(
            refused(&privacy_first, &live(1, 1), RouteMode::Auto, None).contains("privacy-first")
        );
        let mut insists = job();
        insists.pool = Some(Pool::Local);
        assert!(refused(&insists, &live(1, 1), RouteMode::Auto, None).contains("insists"));
        assert!(refused(&job(), &live(1, 1), RouteMode::ForceLocal, None).contains("force-local"));
        assert!(refused(
            &job(),
            &live(1, 1),
            RouteMode::Auto,
            Some("tenant t spent $2")
        )
        .contains("spent $2"));
        let mut free = job();
        free.budget.max_usd = Some(0.0);
        assert!(refused(&free, &live(1, 1), RouteMode::Auto, None).contains("max_usd is 0"));
        assert!(
            refused(&job(), &live(1, 0), RouteMode::Auto, None).contains("no live cloud worker")
        );
    }

    fn route_predicted(
        strategy: Strategy,
        class: Complexity,
        predicted: Option<PoolEstimates>,
    ) -> RouteDecision {
        let mut j = job();
        j.strategy = Some(strategy);
        route_estimated(&j, class, predicted)
    }

    /// `j` routed with both pools live, no lag, and these estimates.
    fn route_estimated(
        j: &JobSpec,
        class: Complexity,
        predicted: Option<PoolEstimates>,
    ) -> RouteDecision {
        route_by(&HybridRouter::default(), j, Some(class), predicted)
    }

    /// `router`'s decision for `j`, its complexity class as analysed unless `class` is
    /// given.
    fn route_by(
        router: &HybridRouter,
        j: &JobSpec,
        class: Option<Complexity>,
        predicted: Option<PoolEstimates>,
    ) -> RouteDecision {
        let mut complexity = analyze(&j.source).expect("source").report;
        if let Some(class) = class {
            complexity.class = class;
        }
        router
            .route(RouteInput {
                job: j,
                complexity: &complexity,
                live: &live(1, 1),
                lag: &PoolLag::default(),
                mode: RouteMode::Auto,
                budget_exhausted: None,
                predicted: predicted.as_ref(),
            })
            .expect("routed")
    }

    fn estimates(local: Option<f64>, cloud: Option<f64>) -> Option<PoolEstimates> {
        Some(PoolEstimates {
            local,
            cloud,
            version: 3,
            recalled: 0,
            untried: None,
        })
    }

    /// The decision went to `pool`, and one of its reasons says `why`.
    fn expect(d: RouteDecision, pool: Pool, why: &str) {
        assert_eq!(d.pool, pool, "{:?}", d.reasons);
        assert!(d.reasons.iter().any(|r| r.contains(why)), "{:?}", d.reasons);
    }

    #[test]
    fn balanced_follows_the_predicted_gain_not_the_complexity_class() {
        let balanced = |class, local, cloud| {
            route_predicted(Strategy::Balanced, class, estimates(local, cloud))
        };
        // A complex module the predictor expects local to handle: stays local.
        let d = balanced(Complexity::VeryComplex, Some(0.82), Some(0.86));
        expect(d.clone(), Pool::Local, "stays local");
        expect(d, Pool::Local, "adapter v3) expects 0.82 local");
        // A simple module where the cloud is expected to add a lot: goes to the cloud.
        let d = balanced(Complexity::Simple, Some(0.40), Some(0.75));
        expect(d, Pool::Cloud, "pays for the cloud");
        // With only one pool learned, the complexity rule decides.
        let d = balanced(Complexity::VeryComplex, Some(0.9), None);
        expect(d, Pool::Cloud, "very_complex module");
    }

    #[test]
    fn quality_stays_local_only_where_local_is_predicted_as_good() {
        let quality = |local, cloud| {
            route_predicted(
                Strategy::Quality,
                Complexity::Simple,
                estimates(local, cloud),
            )
        };
        expect(
            quality(Some(0.9), Some(0.85)),
            Pool::Local,
            "local does as well",
        );
        expect(
            quality(Some(0.84), Some(0.85)),
            Pool::Cloud,
            "prefers the cloud",
        );
        // Cost and privacy-first do not consult it.
        for strategy in [Strategy::Cost, Strategy::PrivacyFirst] {
            let d = route_predicted(
                strategy,
                Complexity::Simple,
                estimates(Some(0.1), Some(0.9)),
            );
            expect(d, Pool::Local, "local");
        }
    }

    #[test]
    fn exploration_is_a_stable_share_of_balanced_and_quality_jobs_once_estimates_exist() {
        let ids: Vec<String> = (0..4000).map(|i| format!("job-{i}")).collect();
        let share = ids.iter().filter(|id| explored(id, 0.05)).count() as f64 / 4000.0;
        assert!((0.035..0.065).contains(&share), "{share}");
        assert!(!ids.iter().any(|id| explored(id, 0.0)));
        let id = ids
            .iter()
            .find(|id| explored(id, 0.05))
            .expect("one explored");
        let mut j = job();
        j.job_id = Some(id.clone());
        let route = |j: &JobSpec, predicted| route_estimated(j, Complexity::Simple, predicted);
        // Before the predictor has learned anything, the rule decides alone.
        assert_eq!(route(&j, None).pool, Pool::Local);
        let d = route(&j, estimates(Some(0.9), None));
        assert_eq!(d.pool, Pool::Cloud, "{:?}", d.reasons);
        assert!(
            d.reasons.iter().any(|r| r.contains("exploring")),
            "{:?}",
            d.reasons
        );
        // The quality strategy explores too: it would otherwise never learn local.
        j.strategy = Some(Strategy::Quality);
        let d = route(&j, estimates(None, Some(0.8)));
        assert_eq!(d.pool, Pool::Local, "{:?}", d.reasons);
        assert!(d.reasons.iter().any(|r| r.contains("exploring")));
        // Cost never does.
        j.strategy = Some(Strategy::Cost);
        assert_eq!(route(&j, estimates(None, Some(0.8))).pool, Pool::Local);
        let cost = route(&j, estimates(Some(0.2), Some(0.8)));
        assert!(!cost.reasons.iter().any(|r| r.contains("exploring")));
        // A pool the memory has no outcome of for jobs like this one is tried, whatever
        // the job id, until it has; not with exploring off.
        let mut k = job();
        k.job_id = Some(
            ids.iter()
                .find(|id| !explored(id, 0.05))
                .expect("one")
                .clone(),
        );
        let mut known_local = estimates(Some(0.9), Some(0.5));
        if let Some(e) = known_local.as_mut() {
            e.recalled = 3;
            e.untried = Some(Pool::Cloud);
        }
        let d = route(&k, known_local);
        assert_eq!(d.pool, Pool::Cloud, "{:?}", d.reasons);
        assert!(d.reasons.iter().any(|r| r.contains("trying cloud")));
        let mut router = HybridRouter::default();
        router.explore = 0.0;
        let quiet = route_by(&router, &k, None, known_local);
        assert_eq!(quiet.pool, Pool::Local, "{:?}", quiet.reasons);
        // Privacy still wins.
        j.strategy = None;
        j.local_only = true;
        assert_eq!(route(&j, estimates(Some(0.9), None)).pool, Pool::Local);
    }
}
