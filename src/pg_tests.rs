//! In-backend tests (`cargo pgrx test`), run with the library preloaded.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn naptime_comes_from_test_config() {
        assert_eq!(Spi::get_one::<String>("SHOW bgworker_rs.naptime").unwrap().as_deref(), Some("100ms"));
    }
}
