//! The ComfyUI stand-in's command line, read the way the fork's `comfy/cli_args.py` has Python's `argparse`
//! read it: every option the fork (0.3.12) defines, long options only, `--name value` and `--name=value`,
//! unambiguous prefixes (`--po 8188`), options with an optional value (`--listen` alone means all
//! interfaces), mutually exclusive groups, and argparse's errors: a usage line and
//! `main.py: error: …` on stderr, exit status 2 (unknown arguments are collected into one message, as
//! argparse does; any other mistake stops at the first).
//!
//! Only some options change what the stand-in does (listen address, port, `--cpu`, `--cuda-device`, the
//! output/temp/input folders, `--quick-test-for-ci`, `--disable-metadata`); the rest are accepted and
//! ignored, so a command line written for the real one is never refused by the stand-in.

use std::collections::BTreeMap;

/// What an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// Nothing (`store_true`).
    Flag,
    /// Exactly one value of this type.
    One(Ty),
    /// One value or none (`nargs="?"`); none means the constant.
    Optional(Ty, &'static str),
    /// One or more values, appended (`nargs="+"`, `action="append"`).
    OneOrMore,
}

/// How a value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    Float,
    Choice(&'static [&'static str]),
    /// The fork's `LatentPreviewMethod` enum (`EnumAction`).
    PreviewMethod,
    /// The fork's `is_valid_directory`: an existing directory.
    Dir,
}

const PREVIEW_METHODS: &[&str] = &["none", "auto", "latent2rgb", "taesd"];
const HASHES: &[&str] = &["md5", "sha1", "sha256", "sha512"];
const LEVELS: &[&str] = &["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

/// One option: its name, what it takes, its metavar in the usage line, its exclusive group (0: none).
struct Opt {
    name: &'static str,
    takes: Takes,
    metavar: &'static str,
    group: u8,
}

const fn opt(name: &'static str, takes: Takes, metavar: &'static str, group: u8) -> Opt {
    Opt {
        name,
        takes,
        metavar,
        group,
    }
}

const F: Takes = Takes::Flag;
const S: Takes = Takes::One(Ty::Str);
const I: Takes = Takes::One(Ty::Int);
const FL: Takes = Takes::One(Ty::Float);

/// The fork's options in its order (`comfy/cli_args.py` at 3fb07a80).
const OPTIONS: &[Opt] = &[
    opt("--listen", Takes::Optional(Ty::Str, "0.0.0.0,::"), "IP", 0),
    opt("--port", I, "PORT", 0),
    opt("--tls-keyfile", S, "TLS_KEYFILE", 0),
    opt("--tls-certfile", S, "TLS_CERTFILE", 0),
    opt(
        "--enable-cors-header",
        Takes::Optional(Ty::Str, "*"),
        "ORIGIN",
        0,
    ),
    opt("--max-upload-size", FL, "MAX_UPLOAD_SIZE", 0),
    opt("--extra-model-paths-config", Takes::OneOrMore, "PATH", 0),
    opt("--output-directory", S, "OUTPUT_DIRECTORY", 0),
    opt("--temp-directory", S, "TEMP_DIRECTORY", 0),
    opt("--input-directory", S, "INPUT_DIRECTORY", 0),
    opt("--auto-launch", F, "", 0),
    opt("--disable-auto-launch", F, "", 0),
    opt("--cuda-device", I, "DEVICE_ID", 0),
    opt("--cuda-malloc", F, "", 1),
    opt("--disable-cuda-malloc", F, "", 1),
    opt("--force-fp32", F, "", 2),
    opt("--force-fp16", F, "", 2),
    opt("--fp32-unet", F, "", 3),
    opt("--fp64-unet", F, "", 3),
    opt("--bf16-unet", F, "", 3),
    opt("--fp16-unet", F, "", 3),
    opt("--fp8_e4m3fn-unet", F, "", 3),
    opt("--fp8_e5m2-unet", F, "", 3),
    opt("--fp16-vae", F, "", 4),
    opt("--fp32-vae", F, "", 4),
    opt("--bf16-vae", F, "", 4),
    opt("--cpu-vae", F, "", 0),
    opt("--fp8_e4m3fn-text-enc", F, "", 5),
    opt("--fp8_e5m2-text-enc", F, "", 5),
    opt("--fp16-text-enc", F, "", 5),
    opt("--fp32-text-enc", F, "", 5),
    opt("--force-channels-last", F, "", 0),
    opt(
        "--directml",
        Takes::Optional(Ty::Int, "-1"),
        "DIRECTML_DEVICE",
        0,
    ),
    opt("--oneapi-device-selector", S, "SELECTOR_STRING", 0),
    opt("--disable-ipex-optimize", F, "", 0),
    opt(
        "--preview-method",
        Takes::One(Ty::PreviewMethod),
        "[none,auto,latent2rgb,taesd]",
        0,
    ),
    opt("--preview-size", I, "PREVIEW_SIZE", 0),
    opt("--cache-classic", F, "", 6),
    opt("--cache-lru", I, "CACHE_LRU", 6),
    opt("--use-split-cross-attention", F, "", 7),
    opt("--use-quad-cross-attention", F, "", 7),
    opt("--use-pytorch-cross-attention", F, "", 7),
    opt("--use-sage-attention", F, "", 7),
    opt("--disable-xformers", F, "", 0),
    opt("--force-upcast-attention", F, "", 8),
    opt("--dont-upcast-attention", F, "", 8),
    opt("--gpu-only", F, "", 9),
    opt("--highvram", F, "", 9),
    opt("--normalvram", F, "", 9),
    opt("--lowvram", F, "", 9),
    opt("--novram", F, "", 9),
    opt("--cpu", F, "", 9),
    opt("--reserve-vram", FL, "RESERVE_VRAM", 0),
    opt(
        "--default-hashing-function",
        Takes::One(Ty::Choice(HASHES)),
        "{md5,sha1,sha256,sha512}",
        0,
    ),
    opt("--disable-smart-memory", F, "", 0),
    opt("--deterministic", F, "", 0),
    opt("--fast", F, "", 0),
    opt("--dont-print-server", F, "", 0),
    opt("--quick-test-for-ci", F, "", 0),
    opt("--windows-standalone-build", F, "", 0),
    opt("--disable-metadata", F, "", 0),
    opt("--disable-all-custom-nodes", F, "", 0),
    opt("--multi-user", F, "", 0),
    opt(
        "--verbose",
        Takes::Optional(Ty::Choice(LEVELS), "DEBUG"),
        "{DEBUG,INFO,WARNING,ERROR,CRITICAL}",
        0,
    ),
    opt("--log-stdout", F, "", 0),
    opt("--front-end-version", S, "FRONT_END_VERSION", 0),
    opt("--front-end-root", Takes::One(Ty::Dir), "FRONT_END_ROOT", 0),
    opt("--user-directory", Takes::One(Ty::Dir), "USER_DIRECTORY", 0),
];

/// The command line as read: the options that matter to the stand-in, and everything given.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// `sys.argv` as the fork would see it: the script (`main.py`, when the stand-in was started through
    /// a `python main.py …` shim) or the program, then the arguments.
    pub argv: Vec<String>,
    /// `--listen`: comma-separated addresses (default `127.0.0.1`; `--listen` alone: `0.0.0.0,::`).
    pub listen: String,
    /// `--port` (default 8188).
    pub port: u16,
    /// `--cpu`: run on the CPU.
    pub cpu: bool,
    /// `--cuda-device N`: the fork sets `CUDA_VISIBLE_DEVICES=N` for itself.
    pub cuda_device: Option<i64>,
    /// `--output-directory` as given.
    pub output_directory: Option<String>,
    /// `--temp-directory` as given (the fork puts its temp folder in a `temp` folder inside it).
    pub temp_directory: Option<String>,
    /// `--input-directory` as given.
    pub input_directory: Option<String>,
    /// `--quick-test-for-ci`: start up, then exit 0 before serving.
    pub quick_test_for_ci: bool,
    /// `--disable-metadata`: no `prompt`/`extra_pnginfo` text in saved PNGs.
    pub disable_metadata: bool,
    /// `--log-stdout`: log lines below ERROR go to stdout instead of stderr.
    pub log_stdout: bool,
    /// `--dont-print-server`: no "To see the GUI go to" line.
    pub dont_print_server: bool,
    /// Every option given, by name, with its values (flags: none), for `/system_stats`-style reporting.
    pub given: BTreeMap<String, Vec<String>>,
}

/// Why the command line was refused, or a request for help: what to print and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// 0 for `--help`, 2 for a usage error (argparse's status).
    pub code: u8,
    /// The text for stdout (help) or stderr (usage and `prog: error: …`), ending in a newline.
    pub text: String,
}

/// Whether `arg` looks like a negative number, which argparse takes as a value (`^-\d+$|^-\d*\.\d+$`).
fn negative_number(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(rest)
        || rest
            .split_once('.')
            .is_some_and(|(a, b)| (a.is_empty() || digits(a)) && digits(b))
}

/// Whether argparse would read `arg` as an option rather than a value.
fn looks_like_option(arg: &str) -> bool {
    arg.starts_with('-') && arg != "-" && !negative_number(arg)
}

/// Python's `repr` of a string as argparse quotes values in its errors (`'abc'`).
fn py_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// The usage text argparse prints: `usage: PROG [-h] [--listen [IP]] …`, wrapped under the program name.
pub fn usage(prog: &str) -> String {
    let mut parts = vec!["[-h]".to_owned()];
    for o in OPTIONS {
        parts.push(match o.takes {
            Takes::Flag => format!("[{}]", o.name),
            Takes::One(_) => format!("[{} {}]", o.name, o.metavar),
            Takes::Optional(..) => format!("[{} [{}]]", o.name, o.metavar),
            Takes::OneOrMore => format!("[{} {} [{} ...]]", o.name, o.metavar, o.metavar),
        });
    }
    let head = format!("usage: {prog} ");
    let indent = " ".repeat(head.len());
    let mut out = String::new();
    let mut line = head;
    let mut first = true;
    for part in parts {
        if !first && line.len() + 1 + part.len() > 79 {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.clone();
        } else if !first {
            line.push(' ');
        }
        line.push_str(&part);
        first = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

fn fail(prog: &str, message: &str) -> Exit {
    Exit {
        code: 2,
        text: format!("{}{prog}: error: {message}\n", usage(prog)),
    }
}

/// Checks one value against its type; the error is argparse's text after `argument NAME: `.
fn check_value(ty: Ty, value: &str) -> Result<(), String> {
    match ty {
        Ty::Str => Ok(()),
        Ty::Int => value
            .trim()
            .replace('_', "")
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| format!("invalid int value: {}", py_repr(value))),
        Ty::Float => value
            .trim()
            .parse::<f64>()
            .map(|_| ())
            .map_err(|_| format!("invalid float value: {}", py_repr(value))),
        Ty::Choice(choices) => {
            if choices.contains(&value) {
                Ok(())
            } else {
                let list: Vec<String> = choices.iter().map(|c| py_repr(c)).collect();
                Err(format!(
                    "invalid choice: {} (choose from {})",
                    py_repr(value),
                    list.join(", ")
                ))
            }
        }
        Ty::PreviewMethod => {
            if PREVIEW_METHODS.contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "invalid LatentPreviewMethod value: {}",
                    py_repr(value)
                ))
            }
        }
        Ty::Dir => {
            if std::path::Path::new(value).is_dir() {
                Ok(())
            } else {
                Err(format!("{value} is not a valid directory."))
            }
        }
    }
}

/// Finds the option `name` names: exactly, else by unique prefix (argparse's `allow_abbrev`); `Ok(None)` is
/// `--help`, an empty error an unknown option.
fn lookup<'a>(name: &str) -> Result<Option<&'a Opt>, String> {
    if name == "--help" {
        return Ok(None);
    }
    if let Some(o) = OPTIONS.iter().find(|o| o.name == name) {
        return Ok(Some(o));
    }
    let mut names: Vec<&str> = vec!["--help"];
    names.extend(OPTIONS.iter().map(|o| o.name));
    let matches: Vec<&str> = names.into_iter().filter(|n| n.starts_with(name)).collect();
    match matches.as_slice() {
        [] => Err(String::new()),
        ["--help"] => Ok(None),
        [one] => Ok(OPTIONS.iter().find(|o| o.name == *one)),
        many => Err(format!(
            "ambiguous option: {name} could match {}",
            many.join(", ")
        )),
    }
}

/// Reads `argv` (the program first). A leading `…main.py` (how a `python main.py …` shim starts the
/// stand-in) is taken as the script, like Python's `sys.argv[0]`; the program name in messages is its file
/// name, as argparse's `prog`.
pub fn parse(argv: &[String]) -> Result<Args, Exit> {
    let mut rest: &[String] = argv.get(1..).unwrap_or(&[]);
    let script = match rest.first() {
        Some(first) if first.ends_with("main.py") && !first.starts_with('-') => {
            rest = &rest[1..];
            first.clone()
        }
        _ => argv
            .first()
            .cloned()
            .unwrap_or_else(|| "main.py".to_owned()),
    };
    let prog = std::path::Path::new(&script)
        .file_name()
        .map_or_else(|| script.clone(), |n| n.to_string_lossy().into_owned());
    let given = read_options(&prog, rest)?;
    args_from(script, rest, given)
}

/// Every option of `rest` with its values, by name, as argparse reads them; unknown arguments are
/// collected into one error, any other mistake (or `--help`) stops at once.
fn read_options(prog: &str, rest: &[String]) -> Result<BTreeMap<String, Vec<String>>, Exit> {
    let mut given: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen_in_group: BTreeMap<u8, &'static str> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        if arg == "--" {
            unknown.extend(rest[i..].iter().cloned());
            break;
        }
        if !arg.starts_with("--") || arg == "--" {
            if arg == "-h" {
                return Err(help(prog));
            }
            unknown.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let found = match lookup(name) {
            Ok(Some(o)) => o,
            Ok(None) => return Err(help(prog)),
            Err(e) if e.is_empty() => {
                unknown.push(arg.clone());
                continue;
            }
            Err(e) => return Err(fail(prog, &e)),
        };
        if found.group != 0 {
            if let Some(other) = seen_in_group.get(&found.group)
                && *other != found.name
            {
                return Err(fail(
                    prog,
                    &format!("argument {}: not allowed with argument {other}", found.name),
                ));
            }
            seen_in_group.insert(found.group, found.name);
        }
        let values = option_values(prog, found, inline, rest, &mut i, &mut given)?;
        given.insert(found.name.to_owned(), values);
    }
    if !unknown.is_empty() {
        return Err(fail(
            prog,
            &format!("unrecognized arguments: {}", unknown.join(" ")),
        ));
    }
    Ok(given)
}

/// The values of one option: `inline` (`--name=value`) or the arguments from `rest[*i]` on (`*i`
/// moves past those taken), checked against the option's type; an appending option's earlier values
/// are taken out of `given` and come first.
fn option_values(
    prog: &str,
    found: &Opt,
    inline: Option<String>,
    rest: &[String],
    i: &mut usize,
    given: &mut BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, Exit> {
    let values = match found.takes {
        Takes::Flag => {
            if let Some(v) = inline {
                return Err(fail(
                    prog,
                    &format!(
                        "argument {}: ignored explicit argument {}",
                        found.name,
                        py_repr(&v)
                    ),
                ));
            }
            Vec::new()
        }
        Takes::One(ty) => {
            let value = match inline {
                Some(v) => v,
                None => match rest.get(*i) {
                    Some(next) if !looks_like_option(next) => {
                        *i += 1;
                        next.clone()
                    }
                    _ => {
                        return Err(fail(
                            prog,
                            &format!("argument {}: expected one argument", found.name),
                        ));
                    }
                },
            };
            check_value(ty, &value)
                .map_err(|e| fail(prog, &format!("argument {}: {e}", found.name)))?;
            vec![value]
        }
        Takes::Optional(ty, constant) => {
            let value = match inline {
                Some(v) => v,
                None => match rest.get(*i) {
                    Some(next) if !looks_like_option(next) => {
                        *i += 1;
                        next.clone()
                    }
                    _ => constant.to_owned(),
                },
            };
            check_value(ty, &value)
                .map_err(|e| fail(prog, &format!("argument {}: {e}", found.name)))?;
            vec![value]
        }
        Takes::OneOrMore => {
            let mut values: Vec<String> = inline.into_iter().collect();
            while let Some(next) = rest.get(*i) {
                if looks_like_option(next) {
                    break;
                }
                values.push(next.clone());
                *i += 1;
            }
            if values.is_empty() {
                return Err(fail(
                    prog,
                    &format!("argument {}: expected at least one argument", found.name),
                ));
            }
            let mut all = given.remove(found.name).unwrap_or_default();
            all.extend(values);
            all
        }
    };
    Ok(values)
}

/// The options that matter to the stand-in, read from `given`; a `--port` outside 0–65535 is the
/// fork's `OverflowError` at bind time (exit 1).
fn args_from(
    script: String,
    rest: &[String],
    given: BTreeMap<String, Vec<String>>,
) -> Result<Args, Exit> {
    let one = |name: &str| given.get(name).and_then(|v| v.last()).cloned();
    let port = match one("--port") {
        None => 8188,
        Some(p) => {
            let n: i64 = p.trim().replace('_', "").parse().unwrap_or(-1);
            u16::try_from(n).map_err(|_| Exit {
                code: 1,
                text: format!("OverflowError: bind(): port must be 0-65535. (--port {p})\n"),
            })?
        }
    };
    let mut full_argv = vec![script];
    full_argv.extend(rest.iter().cloned());
    Ok(Args {
        argv: full_argv,
        listen: one("--listen").unwrap_or_else(|| "127.0.0.1".to_owned()),
        port,
        cpu: given.contains_key("--cpu"),
        cuda_device: one("--cuda-device").and_then(|v| v.trim().replace('_', "").parse().ok()),
        output_directory: one("--output-directory"),
        temp_directory: one("--temp-directory"),
        input_directory: one("--input-directory"),
        quick_test_for_ci: given.contains_key("--quick-test-for-ci"),
        disable_metadata: given.contains_key("--disable-metadata"),
        log_stdout: given.contains_key("--log-stdout"),
        dont_print_server: given.contains_key("--dont-print-server"),
        given,
    })
}

fn help(prog: &str) -> Exit {
    Exit {
        code: 0,
        text: format!(
            "{}\nThe machine-comfyui stand-in for the queue's ComfyUI fork: it accepts the fork's options and \
             acts on --listen, --port, --cpu, --cuda-device, --output-directory, --temp-directory, \
             --input-directory, --quick-test-for-ci, --disable-metadata, --log-stdout and \
             --dont-print-server.\n",
            usage(prog)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        std::iter::once("machine-comfyui")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    fn error(args: &[&str]) -> String {
        let exit = parse(&argv(args)).unwrap_err();
        assert_eq!(exit.code, 2, "{}", exit.text);
        let last = exit.text.lines().last().unwrap().to_owned();
        assert!(
            exit.text
                .starts_with("usage: main.py [-h] [--listen [IP]] [--port PORT]")
        );
        last
    }

    #[test]
    fn the_machines_command_line_is_read() {
        let a = parse(&argv(&[
            "main.py",
            "--listen",
            "0.0.0.0",
            "--port",
            "8190",
            "--cpu",
            "--output-directory",
            "/w/ComfyUI/output/gpu2",
            "--temp-directory=/w/ComfyUI/temp/gpu2",
        ]))
        .unwrap();
        assert_eq!(a.listen, "0.0.0.0");
        assert_eq!(a.port, 8190);
        assert!(a.cpu);
        assert_eq!(
            a.output_directory.as_deref(),
            Some("/w/ComfyUI/output/gpu2")
        );
        assert_eq!(a.temp_directory.as_deref(), Some("/w/ComfyUI/temp/gpu2"));
        assert_eq!(a.argv[0], "main.py");
        assert_eq!(a.argv.len(), 9);
    }

    #[test]
    fn defaults_optional_values_and_prefixes_follow_argparse() {
        let a = parse(&argv(&[])).unwrap();
        assert_eq!(
            (a.listen.as_str(), a.port, a.cpu),
            ("127.0.0.1", 8188, false)
        );
        assert_eq!(a.argv, ["machine-comfyui"]);
        let a = parse(&argv(&[
            "--listen",
            "--po",
            "9",
            "--cuda-d",
            "1",
            "--verbose",
        ]))
        .unwrap();
        assert_eq!(a.listen, "0.0.0.0,::");
        assert_eq!(a.port, 9);
        assert_eq!(a.cuda_device, Some(1));
        assert_eq!(a.given["--verbose"], ["DEBUG"]);
        let a = parse(&argv(&[
            "--extra-model-paths-config",
            "a.yaml",
            "b.yaml",
            "--extra-model-paths-config",
            "c.yaml",
            "--directml",
            "-3",
        ]))
        .unwrap();
        assert_eq!(
            a.given["--extra-model-paths-config"],
            ["a.yaml", "b.yaml", "c.yaml"]
        );
        assert_eq!(a.given["--directml"], ["-3"]);
    }

    #[test]
    fn mistakes_get_argparses_messages_and_status_2() {
        assert_eq!(
            error(&["main.py", "--bogus", "x", "--cpu", "--also-bogus"]),
            "main.py: error: unrecognized arguments: --bogus x --also-bogus"
        );
        assert_eq!(
            error(&["main.py", "--port"]),
            "main.py: error: argument --port: expected one argument"
        );
        assert_eq!(
            error(&["main.py", "--port", "--cpu"]),
            "main.py: error: argument --port: expected one argument"
        );
        assert_eq!(
            error(&["main.py", "--port", "abc"]),
            "main.py: error: argument --port: invalid int value: 'abc'"
        );
        assert_eq!(
            error(&["main.py", "--lowvram", "--cpu"]),
            "main.py: error: argument --cpu: not allowed with argument --lowvram"
        );
        assert_eq!(
            error(&["main.py", "--cpu=yes"]),
            "main.py: error: argument --cpu: ignored explicit argument 'yes'"
        );
        assert_eq!(
            error(&["main.py", "--verbose", "LOUD"]),
            "main.py: error: argument --verbose: invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')"
        );
        assert!(error(&["main.py", "--cu", "0"]).starts_with(
            "main.py: error: ambiguous option: --cu could match --cuda-device, --cuda-malloc"
        ));
        // Without a main.py in front, the program is the script.
        let exit = parse(&argv(&["--nope"])).unwrap_err();
        assert!(
            exit.text
                .ends_with("machine-comfyui: error: unrecognized arguments: --nope\n")
        );
        assert_eq!(
            parse(&argv(&["main.py", "--port", "70000"]))
                .unwrap_err()
                .code,
            1
        );
    }

    #[test]
    fn help_exits_0_and_the_usage_is_wrapped() {
        let exit = parse(&argv(&["main.py", "--help"])).unwrap_err();
        assert_eq!(exit.code, 0);
        assert!(
            usage("main.py").lines().all(|l| l.len() <= 80),
            "{}",
            exit.text
        );
        assert!(exit.text.contains("[--cpu]"));
        assert!(exit.text.contains("[--user-directory USER_DIRECTORY]"));
    }
}
