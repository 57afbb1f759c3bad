UPDATE herald.gate SET armed_until = '1970-01-01 00:00:00+00', armed_by = NULL
