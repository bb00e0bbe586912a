-- Who may launch what.
CREATE ROLE regress_bgw_alice LOGIN;
CREATE ROLE regress_bgw_bob LOGIN;
CREATE DATABASE regress_bgw_closed;
REVOKE CONNECT ON DATABASE regress_bgw_closed FROM PUBLIC;

SELECT has_function_privilege('public', 'bgw_launch(int4,name,name,text[],interval)', 'EXECUTE') AS public_may_execute;

SET ROLE regress_bgw_alice;
SELECT bgw_launch(1);
RESET ROLE;

GRANT EXECUTE ON FUNCTION bgw_launch(int4, name, name, text[], interval) TO regress_bgw_alice;
SET ROLE regress_bgw_alice;
SELECT bgw_launch(1, NULL, 'regress_bgw_bob');
SELECT bgw_launch(1, 'regress_bgw_closed');
SELECT bgw_launch(1, flags => '{ALLOWCONN}');
RESET ROLE;

DROP DATABASE regress_bgw_closed;
REVOKE EXECUTE ON FUNCTION bgw_launch(int4, name, name, text[], interval) FROM regress_bgw_alice;
DROP ROLE regress_bgw_alice;
DROP ROLE regress_bgw_bob;
