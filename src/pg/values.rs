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

/// The text form of a datum, by its type's output function, in UTF-8.
pub fn output_text(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> String {
    let mut func = pg_sys::InvalidOid;
    let mut is_varlena = false;
    // SAFETY: `datum` is a non-NULL value of `type_oid` from the current
    // result; the output function returns a palloc'd C string.
    unsafe {
        pg_sys::getTypeOutputInfo(type_oid, &mut func, &mut is_varlena);
        let text = pg_sys::OidOutputFunctionCall(func, datum);
        let owned = server_to_utf8(CStr::from_ptr(text).to_bytes());
        pg_sys::pfree(text.cast());
        owned
    }
}

/// Text in the database's encoding, as UTF-8 (invalid bytes replaced).
pub fn server_to_utf8(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    // SAFETY: pg_server_to_any reads `len` bytes and returns either its
    // input or a palloc'd, NUL-terminated conversion; a character that has
    // no UTF-8 form raises an ERROR, as for a client.
    unsafe {
        let converted = pg_sys::pg_server_to_any(
            bytes.as_ptr().cast(),
            bytes.len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        );
        if converted.cast_const() == bytes.as_ptr().cast() {
            return String::from_utf8_lossy(bytes).into_owned();
        }
        let owned = CStr::from_ptr(converted).to_string_lossy().into_owned();
        pg_sys::pfree(converted.cast());
        owned
    }
}

/// UTF-8 text in the database's encoding, NUL-terminated and palloc'd in
/// the current memory context. A character the database's encoding cannot
/// hold raises an ERROR (22P05), as for a client.
pub fn utf8_to_server(text: &str) -> *mut std::ffi::c_char {
    let c = std::ffi::CString::new(text).unwrap_or_default();
    // SAFETY: pstrdup copies the NUL-terminated text into the current
    // context; pg_any_to_server returns its input or a palloc'd conversion.
    unsafe {
        let copy = pg_sys::pstrdup(c.as_ptr());
        pg_sys::pg_any_to_server(
            copy,
            c.as_bytes().len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        )
    }
}
