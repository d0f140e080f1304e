//! A child's program and arguments: PM2's interpreter rules, the script's path, the runtime's own
//! binaries, and the service's extra arguments variable (`COMFY_ARGS`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::{CommandError, Context};
use crate::ecosystem::{AppSpec, Interpreter, SELF_SCRIPT};

/// Whether `program` is Node, as PM2 decides it (`interpreter === 'node' || /node$/`).
pub(super) fn runs_node(program: &OsStr) -> bool {
    program.as_encoded_bytes().ends_with(b"node")
}

/// The words of the app's service's extra arguments variable (`COMFY_ARGS` for a `comfyui` app, read
/// from the runtime's environment), appended after the app's own arguments; unset or empty adds none.
/// Split like a shell would; an unclosed quote or a word repeating a flag the machine sets
/// ([`machine_model::service_args`]) is an error naming the variable and the word's position.
pub(super) fn extra_args(app: &AppSpec, ctx: &Context) -> Result<Vec<String>, CommandError> {
    let Some(entry) = app
        .catalog_service
        .and_then(machine_model::catalog::service)
    else {
        return Ok(Vec::new());
    };
    let Some(var) = entry.extra_args_env else {
        return Ok(Vec::new());
    };
    let Some(value) = ctx.runtime_env.get(OsStr::new(var)) else {
        return Ok(Vec::new());
    };
    let Some(value) = value.to_str() else {
        return Err(CommandError::ExtraArgs {
            problems: vec![format!(
                "{var} is not valid UTF-8; write its words in UTF-8"
            )],
        });
    };
    machine_model::service_args::from_env(entry, var, value)
        .map_err(|problems| CommandError::ExtraArgs { problems })
}

/// PM2's interpreter table, by script extension.
pub(crate) fn interpreter_for(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension()?.to_str()?;
    Some(match ext {
        "js" | "cjs" | "mjs" => "node",
        "py" => "python3",
        "sh" => "bash",
        "rb" => "ruby",
        "pl" => "perl",
        "php" => "php",
        "ts" | "tsx" => "bun",
        _ => return None,
    })
}

/// Whether a path is a file, each path looked at once (a [`super::Builder`]'s, for one start).
#[derive(Default)]
pub(super) struct FileChecks(HashMap<PathBuf, bool>);

impl FileChecks {
    fn is_file(&mut self, path: &Path) -> bool {
        match self.0.get(path) {
            Some(&known) => known,
            None => *self
                .0
                .entry(path.to_path_buf())
                .or_insert_with(|| path.is_file()),
        }
    }
}

/// The program and the arguments before the app's own.
pub(super) fn program_and_args(
    app: &AppSpec,
    ctx: &Context,
    files: &mut FileChecks,
) -> (OsString, Vec<OsString>) {
    if app.script == SELF_SCRIPT {
        return (ctx.current_exe.clone().into_os_string(), Vec::new());
    }
    // The simulation service is another binary of this build: the one next to the runtime.
    if app.script == machine_model::catalog::SIMULATION_PROGRAM {
        return (
            ctx.current_exe.with_file_name(&app.script).into(),
            Vec::new(),
        );
    }
    let interpreter = match &app.interpreter {
        Interpreter::None => None,
        Interpreter::Program(p) => Some(p.clone()),
        Interpreter::Auto => interpreter_for(&app.script).map(str::to_string),
    };
    let script = resolve_script(app, files);
    match interpreter {
        None => (script, Vec::new()),
        Some(interpreter) => {
            let mut args: Vec<OsString> = app.interpreter_args.iter().map(OsString::from).collect();
            args.push(script);
            (interpreter.into(), args)
        }
    }
}

/// A script path relative to `cwd` (PM2 looks there first); a bare name not found there is left
/// for the PATH search at exec time.
pub(super) fn resolve_script(app: &AppSpec, files: &mut FileChecks) -> OsString {
    let script = Path::new(&app.script);
    match &app.cwd {
        Some(cwd) if script.is_relative() => {
            let candidate = cwd.join(script);
            if app.script.contains('/') || files.is_file(&candidate) {
                candidate.into_os_string()
            } else {
                script.as_os_str().to_owned()
            }
        }
        _ => script.as_os_str().to_owned(),
    }
}
