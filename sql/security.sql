-- Runs last in CREATE EXTENSION: no function of this extension is executable
-- by PUBLIC. A superuser grants EXECUTE to whom it may concern. Found through
-- pg_depend, so a function added later cannot be forgotten here. Every name
-- is qualified: a role with CREATE on the target schema may have left
-- look-alikes there before the extension was installed.
DO $$
DECLARE
  f pg_catalog.regprocedure;
BEGIN
  FOR f IN
    SELECT d.objid::pg_catalog.regprocedure
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
     WHERE e.extname OPERATOR(pg_catalog.=) 'bgworker_rs'
       AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND d.deptype OPERATOR(pg_catalog.=) 'e'
  LOOP
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
  END LOOP;
END
$$;

-- The exceptions: the view bgw_jobs calls bgw_job_pid() and bgw_job_visible(),
-- and a function in a view runs with the privileges of whoever reads the
-- view. They tell only the pid of a job's run, and whether the reader may
-- manage a job; reading the view still needs SELECT on it.
GRANT EXECUTE ON FUNCTION @extschema@.bgw_job_pid(pg_catalog.int8) TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.bgw_job_visible(pg_catalog.oid, pg_catalog.oid) TO PUBLIC;
