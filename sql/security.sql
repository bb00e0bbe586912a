-- Runs last in CREATE EXTENSION: no function of this extension is executable
-- by PUBLIC. A superuser grants EXECUTE to whom it may concern. Found through
-- pg_depend, so a function added later cannot be forgotten here.
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN
    SELECT d.objid::regprocedure
      FROM pg_depend d
      JOIN pg_extension e ON e.oid = d.refobjid
     WHERE e.extname = 'bgworker_rs'
       AND d.classid = 'pg_proc'::regclass
       AND d.deptype = 'e'
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
  END LOOP;
END
$$;

-- The one exception: the view bgw_jobs calls bgw_job_pid(), and a function in
-- a view runs with the privileges of whoever reads the view. It only tells
-- the pid of a job's run; reading the view still needs SELECT on it.
GRANT EXECUTE ON FUNCTION bgw_job_pid(int8) TO PUBLIC;
