//! The kinds of worker this extension starts, and their names; stored in
//! every registry entry.

/// The kinds of worker; also stored in the shared-memory registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// worker_spi port, registered from `_PG_init`.
    #[default]
    Static,
    /// worker_spi port, started by `bgw_launch()`.
    Dynamic,
    /// Read-only, also on a hot standby (`bgworker_rs.monitor`).
    Monitor,
    /// Starts the runs of the SQL jobs kept in one database; started by
    /// the launcher, index = its place in the table of schedulers.
    Scheduler,
    /// One run of a SQL job, started by a scheduler; index = job id.
    Job,
    /// Starts a scheduler in each database that has active jobs
    /// (`bgworker_rs.max_jobs` > 0); connected to no database.
    Launcher,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Static => "static",
            Kind::Dynamic => "dynamic",
            Kind::Monitor => "monitor",
            Kind::Scheduler => "scheduler",
            Kind::Job => "job",
            Kind::Launcher => "launcher",
        }
    }

    pub fn worker_name(self, index: i32) -> String {
        match self {
            Kind::Static => format!("bgworker_rs worker {index}"),
            Kind::Dynamic => format!("bgworker_rs dynamic worker {index}"),
            Kind::Monitor => "bgworker_rs monitor".to_string(),
            Kind::Scheduler => "bgworker_rs job scheduler".to_string(),
            Kind::Job => format!("bgworker_rs job {index}"),
            Kind::Launcher => "bgworker_rs job launcher".to_string(),
        }
    }

    pub fn worker_type(self) -> &'static str {
        match self {
            Kind::Static => "bgworker_rs",
            Kind::Dynamic => "bgworker_rs dynamic",
            Kind::Monitor => "bgworker_rs monitor",
            Kind::Scheduler => "bgworker_rs job scheduler",
            Kind::Job => "bgworker_rs job",
            Kind::Launcher => "bgworker_rs job launcher",
        }
    }

    /// Workers of one family share the index space: two live workers of the
    /// same family never have the same index. Static and dynamic workers are
    /// one family, since index N means `schemaN` for both.
    pub fn family(self) -> u8 {
        match self {
            Kind::Static | Kind::Dynamic => 0,
            Kind::Monitor => 1,
            Kind::Scheduler => 2,
            Kind::Job => 3,
            Kind::Launcher => 4,
        }
    }

    /// Indexes are unique in the family. Not so for schedulers and runs:
    /// job ids are per database, so two databases' job 1 may run at once,
    /// each run with an entry of its own.
    pub fn unique_index(self) -> bool {
        !matches!(self, Kind::Scheduler | Kind::Job)
    }
}
