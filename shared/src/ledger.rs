//! The daily spend ledger: dollars of cloud cost per UTC day, per tenant and for the
//! whole fleet, in the `qe_spend` bucket. Workers add each published result's cost
//! (compare-and-set, so concurrent workers never lose an addition); schedulers read it
//! to enforce the daily budgets.

use async_nats::jetstream::kv;

/// The key of the fleet-wide total of a day.
pub const ALL_TENANTS: &str = "_all";

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn utc_day(unix_ms: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (unix_ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The ledger key of a tenant's (or [`ALL_TENANTS`]') spend on a day. Characters a key
/// cannot hold become `_`.
pub fn spend_key(day: &str, tenant: &str) -> String {
    let tenant: String = tenant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{day}.{}",
        if tenant.is_empty() { "_none" } else { &tenant }
    )
}

/// Dollars recorded under `key` (0 when nothing is).
pub async fn spent(bucket: &kv::Store, key: &str) -> Result<f64, async_nats::Error> {
    Ok(bucket
        .get(key)
        .await?
        .and_then(|v| String::from_utf8_lossy(&v).trim().parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// Adds `usd` to `key` with compare-and-set; returns the new total.
pub async fn add(bucket: &kv::Store, key: &str, usd: f64) -> Result<f64, async_nats::Error> {
    for _ in 0..32 {
        let entry = bucket.entry(key).await?;
        let (current, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => (
                String::from_utf8_lossy(&e.value)
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0),
                Some(e.revision),
            ),
            _ => (0.0, None),
        };
        let total = current + usd;
        let value = format!("{total}").into_bytes().into();
        let written = match revision {
            Some(r) => bucket
                .update(key, value, r)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => bucket
                .create(key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(total),
            // Someone else wrote in between: read again.
            Err(_) => continue,
        }
    }
    Err(format!("the spend ledger key {key} kept changing; {usd} USD not recorded").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_keys() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_796_192_269_713), "2026-12-02");
        assert_eq!(
            spend_key("2026-12-02", "acme corp/eu"),
            "2026-12-02.acme_corp_eu"
        );
        assert_eq!(spend_key("2026-12-02", ALL_TENANTS), "2026-12-02._all");
    }
}
