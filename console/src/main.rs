use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = console::settings::Settings::parse();
    console::init_logging();
    console::app::run(settings).await
}
