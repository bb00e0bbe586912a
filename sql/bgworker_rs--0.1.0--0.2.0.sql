-- bgworker_rs 0.1.0 -> 0.2.0: jobs in every database.
--
-- Jobs now live in each database where the extension is installed, and a
-- job that runs where it is kept stores NULL as its database, so that it
-- follows its database through a rename or a restore into another cluster.
-- Jobs created before in this database for this database become such jobs;
-- jobs for other databases keep their OID and name.
--
-- Every name is qualified: the script runs with the extension's schema on
-- the search_path.

ALTER TABLE @extschema@.bgw_job_defs
    ALTER COLUMN database DROP NOT NULL,
    ALTER COLUMN database_name DROP NOT NULL;

-- A job's run going, if any: found without reading the job's history.
CREATE INDEX bgw_job_runs_running ON @extschema@.bgw_job_runs (job)
    WHERE status OPERATOR(pg_catalog.=) 'running';

UPDATE @extschema@.bgw_job_defs d
   SET database = NULL, database_name = NULL
  FROM pg_catalog.pg_database db
 WHERE db.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
   AND d.database OPERATOR(pg_catalog.=) db.oid
   AND d.database_name OPERATOR(pg_catalog.=) db.datname;

COMMENT ON TABLE @extschema@.bgw_job_defs IS
'Jobs created by bgw_run() and bgw_schedule() in this database; read them through the view bgw_jobs. database (NULL: this one), role and created_by are identities (OIDs), so a renamed role keeps its jobs and a new role with an old name never inherits them. state: scheduled (a run is due or to come), finished (a one-shot job has run), cancelled (bgw_cancel, or the scheduler, with the reason).';

CREATE OR REPLACE VIEW @extschema@.bgw_jobs WITH (security_barrier) AS
SELECT d.id, d.name, d.sql, d.schedule, d.timezone,
       CASE WHEN d.database IS NULL THEN pg_catalog.current_database()
            ELSE (SELECT db.datname FROM pg_catalog.pg_database db
                   WHERE db.oid OPERATOR(pg_catalog.=) d.database) END AS database,
       pg_catalog.pg_get_userbyid(d.role::pg_catalog.oid) AS role,
       d.every, d.timeout, d.atomic, d.gexec, d.active, d.retries, d.retry_delay,
       CASE WHEN p.pid IS NOT NULL THEN 'running'
            WHEN EXISTS (SELECT FROM @extschema@.bgw_job_runs q
                          WHERE q.job OPERATOR(pg_catalog.=) d.id
                            AND q.status OPERATOR(pg_catalog.=) 'queued') THEN 'queued'
            ELSE d.state END AS state,
       d.created_at,
       pg_catalog.pg_get_userbyid(d.created_by::pg_catalog.oid) AS created_by,
       d.next_run_at, d.runs, p.pid, d.reason,
       d.consecutive_failures, d.last_status, d.last_finished_at, d.skipped
  FROM @extschema@.bgw_job_defs d
  LEFT JOIN LATERAL (SELECT @extschema@.bgw_job_pid(d.id) AS pid) p ON true
 WHERE @extschema@.bgw_job_visible(d.created_by::pg_catalog.oid, d.role::pg_catalog.oid);
