//! gust-store's behaviour through its public interface, on SQLite and on PostgreSQL alike
//! (`both!`), and what only a database shared by several hosts must get right
//! (`postgres`, `tls`). PostgreSQL tests start a server of their own (`gust-testkit`);
//! without PostgreSQL installed they pass without running, except under CI.

mod control;
mod postgres;
mod queue;
mod support;
mod tls;
