//! Row 7: the first request of the prewarmed key, against a fresh key's cold start.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cold::{executor_cold, ExecCold};
use crate::conn::{execute_answer, execute_body, Conn};
use crate::fixture::{INPUT, PREWARM_CPU, PREWARM_MEM};
use crate::metrics::{scrape, WARM_REQUESTS};
use crate::table::{ms, row, signed_ms, Row};

pub struct Prewarm {
    first_ms: f64,
    /// Whether the executor counted the request as `path="warm"`.
    was_warm: bool,
    fresh: ExecCold,
}

impl Prewarm {
    pub async fn measure(ctl: &mut Conn, conn: &mut Conn) -> Result<Prewarm, String> {
        let before = scrape(ctl).await?;
        let prewarm_body = execute_body(Some(PREWARM_CPU), Some(PREWARM_MEM), INPUT);
        let answer = execute_answer(INPUT);
        let t = Instant::now();
        let (status, got) = conn.send(Method::POST, "/", prewarm_body).await?;
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        if status != StatusCode::OK || got != answer {
            return Err(format!(
                "prewarmed key answered HTTP {status}: {}",
                String::from_utf8_lossy(&got)
            ));
        }
        let after = scrape(ctl).await?;
        let was_warm = after.value(WARM_REQUESTS) - before.value(WARM_REQUESTS) == 1.0;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Its non-prewarmed twin: same cpu, next mem.
        let fresh = executor_cold(ctl, conn, PREWARM_CPU, PREWARM_MEM + 1, INPUT).await?;
        Ok(Prewarm {
            first_ms,
            was_warm,
            fresh,
        })
    }

    pub fn rows(&self) -> Vec<Row> {
        vec![row(
            "7",
            format!(
                "first request, prewarmed key{}",
                if self.was_warm {
                    ""
                } else {
                    " (NOT served warm)"
                }
            ),
            ms(self.first_ms),
            format!("{} fresh key", ms(self.fresh.total_ms)),
            signed_ms(self.first_ms - self.fresh.total_ms),
            "",
        )]
    }

    /// The JSON's `prewarm`.
    pub fn json(&self) -> Value {
        json!({
            "prewarmed_first_request_ms": self.first_ms,
            "prewarmed_served_warm": self.was_warm,
            "fresh_key_first_request_ms": self.fresh.total_ms,
            "fresh_key_phases_ms": self.fresh.phases,
        })
    }
}
