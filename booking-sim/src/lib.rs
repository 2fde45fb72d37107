//! booking-sim: the gateway simulator (`psp`), and later the scripted sessions, racing
//! operators, load and chaos drivers that exercise the coordinator from the outside.

pub mod chaos;
pub mod checker;
pub mod demo;
pub mod load;
pub mod psp;
pub mod race;
pub mod sim_control;
pub mod stack;
pub mod watch;
pub mod watch_bench;
