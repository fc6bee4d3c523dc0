//! `rampart-testguest --out DIR [NAME...]`: writes `DIR/NAME.elf` for each named test program
//! (every program when none is named).

use std::path::PathBuf;
use std::process::ExitCode;

use rampart_testguest::{build, BuildError, Program, UnknownProgram};
use thiserror::Error;

const USAGE: &str = "usage: rampart-testguest --out DIR [NAME...]\n       rampart-testguest --list";

#[derive(Debug, Error)]
enum CliError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error(transparent)]
    Unknown(#[from] UnknownProgram),
    #[error("building {program}: {source}")]
    Build {
        program: Program,
        source: BuildError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn run(args: Vec<String>) -> Result<(), CliError> {
    let mut out: Option<PathBuf> = None;
    let mut names = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" | "-o" => {
                let dir = it
                    .next()
                    .ok_or_else(|| CliError::Usage("--out needs a directory".to_owned()))?;
                out = Some(PathBuf::from(dir));
            }
            "--list" => {
                for p in Program::ALL {
                    println!("{p}");
                }
                return Ok(());
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') => return Err(CliError::Usage(format!("unknown option {s}"))),
            _ => names.push(arg.parse::<Program>()?),
        }
    }
    let dir = out.ok_or_else(|| CliError::Usage("--out DIR is required".to_owned()))?;
    if names.is_empty() {
        names = Program::ALL.to_vec();
    }
    std::fs::create_dir_all(&dir).map_err(|source| CliError::Write {
        path: dir.clone(),
        source,
    })?;
    for program in names {
        let image = build(program).map_err(|source| CliError::Build { program, source })?;
        let path = dir.join(format!("{program}.elf"));
        std::fs::write(&path, image).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
        println!("{}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart-testguest: {e}");
            ExitCode::FAILURE
        }
    }
}
