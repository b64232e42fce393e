//! Telling a refusal for lack of privilege from any other failure.

/// Did this error come from the kernel refusing a call for lack of
/// privilege (EPERM, EACCES), or from a tool saying so?
pub fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let errno = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| cause.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32));
        matches!(errno, Some(libc::EPERM) | Some(libc::EACCES)) || mentions_permission(&cause.to_string())
    })
}

/// Text (a tool's stderr, a probe's error) that says a call was refused.
pub fn mentions_permission(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("Permission denied")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_refusals() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM)).context("load program");
        assert!(is_permission_error(&e));
        let e = anyhow::Error::new(nix::errno::Errno::EACCES).context("x");
        assert!(is_permission_error(&e));
        let e = anyhow::anyhow!("nft -f -: Error: Could not process rule: Operation not permitted");
        assert!(is_permission_error(&e));
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(!is_permission_error(&e));
    }
}
