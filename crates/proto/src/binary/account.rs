//! Accounts, devices and profiles (keys 0x10–0x18): registration, password and token
//! logins, logout, password changes and profiles.

/// The account frames, for `define_frames!` (see `binary/table.rs`).
macro_rules! account_frames {
    ([$next:ident $($rest:ident)*] $($done:tt)*) => { $next! { [$($rest)*] $($done)*
        Register = REGISTER 0x10 { username: Bytes, password: Bytes },
        /// `flags`: see [`flags`](crate::binary::flags).
        LoginPassword = LOGIN_PASSWORD 0x11 {
            username: Bytes, password: Bytes, device: Bytes, flags: u8
        },
        LoginToken = LOGIN_TOKEN 0x12 { token: Bytes },
        /// Server → client, before the response to a `LoginPassword` that asked for it.
        Token = TOKEN 0x13 {
            token: Bytes,
            /// Unix milliseconds.
            expires_at: u64,
        },
        /// `scope` 0: this device; 1: every device of the account.
        Logout = LOGOUT 0x14 { scope: u8 },
        ChangePassword = CHANGE_PASSWORD 0x15 { old: Bytes, new: Bytes },
        SetProfile = SET_PROFILE 0x16 { display_name: Bytes, avatar: Bytes },
        GetProfile = GET_PROFILE 0x17 { username: Bytes },
        /// Server → client, before the response to a `GetProfile`.
        Profile = PROFILE 0x18 { username: Bytes, display_name: Bytes, avatar: Bytes },
    } };
}
pub(super) use account_frames;

/// Flags of `LoginPassword`.
pub mod flags {
    /// Issue a device token (sent as a `Token` frame before the response).
    pub const WANT_TOKEN: u8 = 0x01;
}
