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
