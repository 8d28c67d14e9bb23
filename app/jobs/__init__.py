"""What runs and evaluations share as jobs queued to the workers: a state machine built from one table of
transitions (:mod:`app.jobs.states`), and the conditional SQL of claims, leases and re-sends
(:mod:`app.jobs.leases`)."""
