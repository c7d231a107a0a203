//! Routing: which pool a job goes to, and why. The [`Router`] trait is what the hybrid
//! router of a later issue implements; [`RuleRouter`] is the first, rule-based one.

use std::collections::HashMap;

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

/// Everything a router may look at.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub job: &'a JobSpec,
    pub complexity: &'a ComplexityReport,
    pub live: &'a LivePools,
}

/// Decides the pool of a job. Must be cheap: it runs on every submission.
pub trait Router: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn route(&self, input: RouteInput<'_>) -> Result<RouteDecision, ErrorReply>;
}

/// Strategy rules, privacy first, then liveness: a pool nobody serves is only chosen when
/// the job insists on it.
#[derive(Debug, Clone, Copy)]
pub struct RuleRouter {
    pub default_strategy: Strategy,
}

impl Router for RuleRouter {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn route(&self, input: RouteInput<'_>) -> Result<RouteDecision, ErrorReply> {
        let RouteInput {
            job,
            complexity,
            live,
        } = input;
        let strategy = job.strategy.unwrap_or(self.default_strategy);
        let mut reasons = Vec::new();
        let pool = if let Some(pool) = job.pool {
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
        } else {
            let wants_cloud = match strategy {
                Strategy::PrivacyFirst => {
                    reasons.push("strategy privacy-first: local workers only".into());
                    false
                }
                Strategy::Cost => {
                    reasons.push("strategy cost: local workers cost least".into());
                    false
                }
                Strategy::Quality => {
                    reasons.push("strategy quality: prefers the cloud engines".into());
                    true
                }
                Strategy::Balanced => {
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
            if !wants_cloud {
                Pool::Local
            } else if job.budget.max_usd == Some(0.0) {
                reasons.push("budget.max_usd is 0: cloud engines cost money, routed local".into());
                Pool::Local
            } else if live.count(Pool::Cloud) == 0 {
                reasons.push(
                    "no live cloud worker (no cloud credentials configured?): routed local".into(),
                );
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
        RuleRouter {
            default_strategy: Strategy::Balanced,
        }
        .route(RouteInput {
            job,
            complexity: &complexity,
            live: pools,
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
}
