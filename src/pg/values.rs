//! Values crossing between SQL and Rust that pgrx does not convert.

use pgrx::pg_sys;
use std::ffi::CStr;

/// Number of dimensions of an array argument; pgrx's `Array` flattens them.
pub fn array_ndim(array: *const pg_sys::ArrayType) -> i32 {
    assert!(!array.is_null(), "array_ndim() on a NULL array");
    // SAFETY: a detoasted, non-NULL ArrayType handed over by pgrx.
    unsafe { (*array).ndim }
}

// ---------------------------------------------------------------------------
// SQL `name` values for result columns.

/// A value of SQL type `name` (at most NAMEDATALEN - 1 bytes; longer input is
/// cut at a character boundary, as PostgreSQL does).
pub struct SqlName(pub String);

pgrx::impl_sql_translatable!(SqlName, "name");

impl pgrx::IntoDatum for SqlName {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let max = pg_sys::NAMEDATALEN as usize - 1;
        let mut end = self.0.len().min(max);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        // SAFETY: palloc0 of a full NameData, so the value is NUL-padded to
        // NAMEDATALEN as every reader of `name` expects.
        unsafe {
            let name = pg_sys::palloc0(std::mem::size_of::<pg_sys::NameData>()).cast::<u8>();
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), name, end);
            Some(pg_sys::Datum::from(name))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::NAMEOID
    }
}

// SAFETY: returns the datum built by into_datum(), a palloc'd NameData.
unsafe impl pgrx::callconv::BoxRet for SqlName {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        use pgrx::IntoDatum;
        match self.into_datum() {
            // SAFETY: a valid `name` datum for the function's result.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

/// The text form of a datum, by its type's output function.
pub fn output_text(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> String {
    let mut func = pg_sys::InvalidOid;
    let mut is_varlena = false;
    // SAFETY: `datum` is a non-NULL value of `type_oid` from the current SPI
    // result; the output function returns a palloc'd C string.
    unsafe {
        pg_sys::getTypeOutputInfo(type_oid, &mut func, &mut is_varlena);
        let text = pg_sys::OidOutputFunctionCall(func, datum);
        let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        owned
    }
}
