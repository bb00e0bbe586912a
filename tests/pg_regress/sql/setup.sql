-- run first, right after the regression database is created
CREATE EXTENSION bgworker_rs;

-- bgw_launch() returns once the postmaster has started the worker; the worker
-- appears in pg_stat_activity a moment later, once attached. Poll, with a deadline.
CREATE FUNCTION wait_for_backend(p int, timeout interval DEFAULT '20s') RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  deadline timestamptz := clock_timestamp() + timeout;
BEGIN
  LOOP
    PERFORM pg_stat_clear_snapshot();
    IF EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = p) THEN
      RETURN true;
    END IF;
    IF clock_timestamp() > deadline THEN
      RETURN false;
    END IF;
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
