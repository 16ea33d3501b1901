//! Resilience policy applied per destination. Today: endpoint balancing; the timeout is
//! applied in the outbound journey. Retries, breakers and degradation build on these.

pub mod balance;
