SELECT armed_until, armed_until > now(), armed_by FROM herald.gate
