use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    paystep::cli::run().await
}
