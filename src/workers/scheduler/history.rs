//! Pruning `bgw_job_runs`: runs finished longer ago than
//! `bgworker_rs.history_max_age`, and beyond the last
//! `bgworker_rs.history_max_runs` of each job, go. In small batches, in a
//! subtransaction of their own, after the wake's runs have started, and at
//! most once a minute unless a batch was full: never in the way of a run.

use super::{State, Tick};
use crate::pg;
use crate::settings;
use crate::store::{SpiResult, Tables};
use pgrx::spi::SpiClient;
use std::time::{Duration, Instant};

const BATCH: i64 = 1000;
const EVERY: Duration = Duration::from_secs(60);

pub(super) fn prune_now_and_then(
    client: &mut SpiClient<'_>,
    t: &Tables,
    state: &mut State,
    tick: &mut Tick,
) {
    if state.pruned.is_some_and(|at| at.elapsed() < EVERY) {
        return;
    }
    match pg::in_subtransaction(|| prune(client, t)) {
        Ok(Ok(deleted)) => {
            // A full batch: more to do, at the next wake.
            state.pruned = (deleted < BATCH).then(Instant::now);
            tick.more |= deleted >= BATCH;
        }
        // Locked or failing: try again in a minute.
        _ => state.pruned = Some(Instant::now()),
    }
}

/// Deletes at most `BATCH` runs of each kind; returns the larger count.
fn prune(client: &mut SpiClient<'_>, t: &Tables) -> SpiResult<i64> {
    let max_age = settings::HISTORY_MAX_AGE_S.get();
    let max_runs = settings::HISTORY_MAX_RUNS.get();
    let mut most = 0;
    if max_age >= 0 {
        let old = client
            .update(
                &format!(
                    "DELETE FROM {runs} WHERE ctid = ANY (ARRAY( \
                       SELECT ctid FROM {runs} \
                        WHERE finished_at < clock_timestamp() - $1 * interval '1 second' \
                        LIMIT $2 FOR UPDATE SKIP LOCKED))",
                    runs = t.runs
                ),
                None,
                &[max_age.into(), BATCH.into()],
            )?
            .len() as i64;
        most = most.max(old);
    }
    if max_runs >= 0 {
        let beyond = client
            .update(
                &format!(
                    "DELETE FROM {runs} WHERE ctid = ANY (ARRAY( \
                       SELECT ctid FROM ( \
                         SELECT ctid, row_number() OVER (PARTITION BY job ORDER BY run DESC) AS n \
                           FROM {runs} WHERE finished_at IS NOT NULL) numbered \
                        WHERE n > $1 LIMIT $2))",
                    runs = t.runs
                ),
                None,
                &[max_runs.into(), BATCH.into()],
            )?
            .len() as i64;
        most = most.max(beyond);
    }
    Ok(most)
}
