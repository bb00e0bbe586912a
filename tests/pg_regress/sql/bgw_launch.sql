-- The SQL surface of bgw_launch() and its error messages.
\df bgw_launch
SELECT obj_description('bgw_launch(int4,name,name,text[],interval)'::regprocedure) IS NOT NULL AS documented;

-- index
SELECT bgw_launch(NULL);
SELECT bgw_launch(0);
SELECT bgw_launch(-1);

-- names are resolved at launch
SELECT bgw_launch(1, 'nosuchdb');
SELECT bgw_launch(1, NULL, 'nosuchrole');
SELECT bgw_launch(1, '', NULL);
SELECT bgw_launch(1, 'db "with" quotes');

-- flags
SELECT bgw_launch(1, flags => NULL);
SELECT bgw_launch(1, flags => '{allowconn}');
SELECT bgw_launch(1, flags => '{ALLOWCONN, ALLOWCONN}');
SELECT bgw_launch(1, flags => '{ALLOWCONN, NULL}');
SELECT bgw_launch(1, flags => '{{ALLOWCONN}}');

-- a good launch returns a live worker's pid, never NULL
SELECT bgw_launch(31) AS pid \gset
SELECT wait_for_backend(:pid);
SELECT backend_type, datname = current_database() AS in_this_db, usename = current_user AS as_me
  FROM pg_stat_activity WHERE pid = :pid;
SELECT pg_terminate_backend(:pid);

-- restart_after
SELECT bgw_launch(1, restart_after => '-1 second');
SELECT bgw_launch(1, restart_after => '100 years');

-- the same index twice
SELECT bgw_launch(32) AS pid \gset
\set VERBOSITY terse
-- (DETAIL and HINT name the running pid, which varies)
SELECT bgw_launch(32);
\set VERBOSITY default
SELECT bgw_terminate(:pid);
