fn main() -> std::process::ExitCode {
    cniguard::cli::main()
}
