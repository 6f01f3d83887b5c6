//! `wasi:http/outgoing-handler`: every request is refused until per-agent allow-lists exist.
//!
//! The interface is linked from the start so that guests written against it (and toolchains
//! that always import it, such as componentize-js) link today and keep working when outbound
//! access is opened per deployment.

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::CallInfo;

/// Hooks that deny every outgoing request, with a log line naming the target.
pub(crate) struct DenyAll {
    pub(crate) info: CallInfo,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for DenyAll {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let CallInfo {
            agent,
            version,
            run_id,
        } = &self.info;
        let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or("");
        tracing::warn!(%agent, version, %run_id, target = %authority, "outgoing HTTP request denied: this deployment allows no hosts");
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}
