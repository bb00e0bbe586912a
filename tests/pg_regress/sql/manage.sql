-- bgw_list, bgw_terminate, bgw_wait: the SQL surface and its errors.
\df bgw_list
\df bgw_terminate
\df bgw_wait

SELECT bgw_terminate(NULL);
SELECT bgw_wait(NULL);
SELECT bgw_terminate(1, '-1 second');
SELECT bgw_wait(1, '-1 second');

-- pids that are not ours
SELECT bgw_terminate(pg_backend_pid());
SELECT bgw_wait(pg_backend_pid(), '0');

-- a worker's life as bgw_list shows it
SELECT bgw_launch(41) AS pid \gset
SELECT index, pid = :pid AS same_pid, name, type, kind, database = current_database() AS here,
       role = current_user AS as_me, state, started_at <= now() AS started, restarts, last_error
  FROM bgw_list() WHERE index = 41;
SELECT bgw_wait(:pid, '10 ms');
SELECT bgw_terminate(:pid);
SELECT index, pid, state, last_error FROM bgw_list() WHERE index = 41;
SELECT bgw_wait(:pid);
SELECT bgw_terminate(:pid);
