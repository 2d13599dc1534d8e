//! Reading a peer's HTTP answer, bounded: only to find a result code or to say why a send
//! failed, never more than the adapter allows.

/// The body of `response`, up to `max_bytes` (the rest is left unread), as text.
pub(crate) async fn read_bounded(mut response: reqwest::Response, max_bytes: usize) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = max_bytes.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max_bytes {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}
