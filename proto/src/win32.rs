//! The few Win32 facts both sides of framebroker need on Windows: the user's name
//! and SID, the owner-only security descriptor every named object gets, object
//! names as UTF-16, and the monotonic clock. Decisions 12–14 in
//! `proto/doc/decisions.md` say why.

use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, LocalFree, HANDLE};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY,
    TOKEN_USER,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
use windows_sys::Win32::System::WindowsProgramming::GetUserNameW;

/// `s` as a NUL-terminated UTF-16 string.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The text of the calling thread's last Win32 error, with its number.
pub fn last_error() -> String {
    // SAFETY: reads the thread's last-error value; no memory involved.
    let code = unsafe { GetLastError() };
    format!(
        "{} (Win32 error {code})",
        std::io::Error::from_raw_os_error(code as i32)
    )
}

/// A kernel handle closed on drop.
#[derive(Debug)]
pub struct OwnedHandle(pub HANDLE);

// SAFETY: a kernel handle is a process-wide index, usable from any thread.
unsafe impl Send for OwnedHandle {}
// SAFETY: as above; every call we make on it is thread-safe in Win32.
unsafe impl Sync for OwnedHandle {}

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: we own the handle and close it once.
            unsafe { CloseHandle(self.0) };
        }
    }
}

/// The account name of this process's user (`GetUserNameW`), as the default pipe
/// name uses it. `None` if Windows cannot say.
pub fn user_name() -> Option<String> {
    let mut buf = [0u16; 257];
    let mut len = buf.len() as u32;
    // SAFETY: `buf` holds `len` u16s; GetUserNameW writes at most that many, the
    // terminating NUL included, and sets `len` to the count written.
    let ok = unsafe { GetUserNameW(buf.as_mut_ptr(), &mut len) };
    if ok == 0 || len == 0 {
        return None;
    }
    Some(String::from_utf16_lossy(&buf[..len as usize - 1]))
}

/// The string form (`S-1-5-21-…`) of this process's user SID.
pub fn user_sid() -> Result<String, String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of our process; `token` receives a new handle.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(format!("OpenProcessToken: {}", last_error()));
    }
    let token = OwnedHandle(token);
    let mut needed = 0u32;
    // SAFETY: a size query: no buffer, `needed` receives the size.
    unsafe { GetTokenInformation(token.0, TokenUser, std::ptr::null_mut(), 0, &mut needed) };
    if needed == 0 {
        return Err(format!("GetTokenInformation: {}", last_error()));
    }
    // u64 words: TOKEN_USER needs pointer alignment.
    let mut buf = vec![0u64; (needed as usize).div_ceil(8)];
    // SAFETY: `buf` holds at least `needed` bytes, suitably aligned for TOKEN_USER.
    if unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            buf.as_mut_ptr().cast(),
            needed,
            &mut needed,
        )
    } == 0
    {
        return Err(format!("GetTokenInformation: {}", last_error()));
    }
    // SAFETY: GetTokenInformation(TokenUser) filled `buf` with a TOKEN_USER whose
    // SID pointer points into `buf`, alive for this function.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is valid (above); `text` receives a LocalAlloc'ed string.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(format!("ConvertSidToStringSidW: {}", last_error()));
    }
    // SAFETY: `text` is a NUL-terminated UTF-16 string from LocalAlloc; we read it up
    // to the NUL, then free it once.
    let s = unsafe {
        let mut n = 0;
        while *text.add(n) != 0 {
            n += 1;
        }
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, n));
        LocalFree(text.cast());
        s
    };
    Ok(s)
}

/// The SDDL of every object the broker names: a protected DACL with one ACE, all
/// access for this process's user, nobody else.
pub fn owner_only_sddl() -> Result<String, String> {
    Ok(format!("D:P(A;;GA;;;{})", user_sid()?))
}

/// A self-relative security descriptor (freed on drop) and the
/// `SECURITY_ATTRIBUTES` that point at it.
pub struct OwnerOnly {
    sd: PSECURITY_DESCRIPTOR,
}

impl OwnerOnly {
    pub fn new() -> Result<Self, String> {
        let sddl = wide(&owner_only_sddl()?);
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'ed descriptor.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(format!(
                "ConvertStringSecurityDescriptorToSecurityDescriptorW: {}",
                last_error()
            ));
        }
        Ok(OwnerOnly { sd })
    }

    /// Attributes for a Create…W call; valid while `self` lives.
    pub fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.sd,
            bInheritHandle: 0,
        }
    }
}

impl Drop for OwnerOnly {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW
        // with LocalAlloc; freed once.
        unsafe { LocalFree(self.sd) };
    }
}

/// `QueryPerformanceCounter` in ns, rounded down: the same clock in every process
/// (what Python's `time.perf_counter_ns()` reads on Windows).
pub fn monotonic_ns() -> u64 {
    use windows_sys::Win32::System::Performance::{
        QueryPerformanceCounter, QueryPerformanceFrequency,
    };
    let (mut ticks, mut freq) = (0i64, 0i64);
    // SAFETY: each call writes one i64 we own; both always succeed since Windows XP.
    unsafe {
        QueryPerformanceCounter(&mut ticks);
        QueryPerformanceFrequency(&mut freq);
    }
    if freq <= 0 {
        return 0;
    }
    (ticks as u128 * 1_000_000_000 / freq as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_has_a_name_and_a_sid() {
        let name = user_name().expect("GetUserNameW");
        assert!(!name.is_empty());
        let sid = user_sid().unwrap();
        assert!(sid.starts_with("S-1-"), "{sid}");
        let sd = OwnerOnly::new().unwrap();
        assert_eq!(sd.attributes().bInheritHandle, 0);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = monotonic_ns();
        assert!(b - a >= 15_000_000, "{a} {b}");
    }
}
