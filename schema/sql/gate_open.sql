-- Open (or renew) the wake-up gate for $1 (an interval).
UPDATE herald.gate SET armed_until = now() + $1::interval, armed_by = pg_backend_pid()
