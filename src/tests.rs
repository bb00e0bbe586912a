//! In-backend tests (`cargo pgrx test`), with the library preloaded.
use pgrx::prelude::*;

#[pg_test]
fn naptime_default_is_ten_seconds() {
    assert_eq!(
        Spi::get_one::<String>("SHOW bgworker_rs.naptime")
            .unwrap()
            .as_deref(),
        Some("100ms")
    );
}
