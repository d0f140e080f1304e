//! Layering: the profile's component selection, defaults, profile `env` and declared secrets merged into one
//! resolved set, with the origin of every variable and everything it overrode.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::ComponentSet;
use super::diag::{Diagnostic, Position, did_you_mean, has_errors, quoted_list};
use super::interpolate::{self, EnvFallback, Expansion, Mode, PoolKind, PoolVar, Template, Value};
use super::parse::{ComponentFile, is_identifier, section_list};

/// What a profile selects from one component: one section or an ordered list (later sections win).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The component name: the file stem of `<name>.env`.
    pub component: String,
    /// The sections, in layering order.
    pub sections: Vec<String>,
    /// Where the selection is in the profile file, when known.
    pub position: Option<Position>,
}

impl Selection {
    /// A selection without a position.
    pub fn new<S: Into<String>>(
        component: impl Into<String>,
        sections: impl IntoIterator<Item = S>,
    ) -> Self {
        Selection {
            component: component.into(),
            sections: sections.into_iter().map(Into::into).collect(),
            position: None,
        }
    }
}

/// One variable of a profile's `env` (applied last, so it wins) or one default (applied first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    /// The full variable name (no namespace is added).
    pub name: String,
    /// The value, in the unquoted template syntax (`${VAR}`, `$$`, ...).
    pub value: String,
    /// Where it is in the profile file, when known.
    pub position: Option<Position>,
}

impl EnvVar {
    /// A variable without a position.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: value.into(),
            position: None,
        }
    }
}

/// A default value, the lowest layer (for example from the service catalog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultVar {
    /// The full variable name.
    pub name: String,
    /// The value, in the unquoted template syntax.
    pub value: String,
    /// Who gives this default, for explain (for example `catalog: comfyui`).
    pub by: String,
}

/// The secrets a profile needs, each with who needs it. Every declared secret becomes a variable whose value is
/// a reference, filled in at run time; values may refer to it with `${NAME}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretDecls {
    declared: BTreeMap<String, Vec<String>>,
}

impl SecretDecls {
    /// No secrets.
    pub fn new() -> Self {
        SecretDecls::default()
    }

    /// Declares `name` as a secret needed by `by` (for example `connector openai`).
    pub fn declare(&mut self, name: impl Into<String>, by: impl Into<String>) -> &mut Self {
        self.declared
            .entry(name.into())
            .or_default()
            .push(by.into());
        self
    }

    /// Whether `name` is declared.
    pub fn contains(&self, name: &str) -> bool {
        self.declared.contains_key(name)
    }

    /// The declared names with who needs them, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.declared
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// Everything [`resolve`] needs besides the component files.
#[derive(Clone, Copy, Debug)]
pub struct ResolveInput<'a> {
    /// The profile's name, for messages (`gpu-mixed`).
    pub profile: &'a str,
    /// The profile's file, for messages (`profiles/gpu-mixed.json`).
    pub profile_file: &'a str,
    /// The component selection, in the profile's order.
    pub selection: &'a [Selection],
    /// Defaults, applied first.
    pub defaults: &'a [DefaultVar],
    /// The profile's `env`, applied last.
    pub env: &'a [EnvVar],
    /// The secrets the profile needs.
    pub secrets: &'a SecretDecls,
    /// Whether references nobody defines may come from the caller's environment (off by default).
    pub env_fallback: EnvFallback<'a>,
}

impl<'a> ResolveInput<'a> {
    /// An input with only a selection: no defaults, no env, no secrets, no environment fallback.
    pub fn new(profile: &'a str, profile_file: &'a str, selection: &'a [Selection]) -> Self {
        const NO_SECRETS: &SecretDecls = &SecretDecls {
            declared: BTreeMap::new(),
        };
        ResolveInput {
            profile,
            profile_file,
            selection,
            defaults: &[],
            env: &[],
            secrets: NO_SECRETS,
            env_fallback: EnvFallback::Deny,
        }
    }
}

/// Where a variable's value was set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `KEY=VALUE` line of a component section.
    Component {
        /// The component name.
        component: String,
        /// The component file, as named in messages.
        file: String,
        /// The section.
        section: String,
        /// Where the line is.
        position: Position,
    },
    /// The profile's `env`.
    Profile {
        /// The profile file.
        file: String,
        /// Where in the profile file, when known.
        position: Option<Position>,
    },
    /// A default.
    Default {
        /// Who gives the default.
        by: String,
    },
    /// A declared secret: no value at build time.
    Secret {
        /// Who declared or needs it (`redis.env:14 section [remote]`, `connector openai`).
        declared_by: Vec<String>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Component {
                component,
                file,
                section,
                position,
            } => {
                write!(
                    f,
                    "{file}:{} section [{section}] of component {component}",
                    position.line
                )
            }
            Origin::Profile {
                file,
                position: Some(p),
            } => write!(f, "profile env at {file}:{}:{}", p.line, p.column),
            Origin::Profile {
                file,
                position: None,
            } => write!(f, "profile env in {file}"),
            Origin::Default { by } => write!(f, "default from {by}"),
            Origin::Secret { declared_by } => {
                write!(f, "secret declared by {}", declared_by.join(", "))
            }
        }
    }
}

/// An earlier layer that a later one overrode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadowed {
    /// Where the overridden value was set.
    pub origin: Origin,
    /// The overridden value as written (template syntax).
    pub raw: String,
}

/// One variable of the resolved set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVar {
    /// The full variable name.
    pub name: String,
    /// The final value (secrets stay references).
    pub value: Value,
    /// Where the winning layer was set.
    pub origin: Origin,
    /// The winning value as written, before interpolation (`None` for secrets).
    pub raw: Option<String>,
    /// The layers it overrode, earliest first.
    pub shadowed: Vec<Shadowed>,
    /// The references expanded to compute the value.
    pub expansions: Vec<Expansion>,
}

impl ResolvedVar {
    /// Whether this variable is itself a declared secret.
    pub fn is_secret(&self) -> bool {
        matches!(self.origin, Origin::Secret { .. })
    }
}

/// A secret the profile needs and what needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    /// The secret's name.
    pub name: String,
    /// Who declared it, and which variables refer to it.
    pub needed_by: Vec<String>,
}

/// The resolved variables of a profile, in first-definition order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Resolved {
    vars: Vec<ResolvedVar>,
    index: HashMap<String, usize>,
    /// Warnings found while resolving (errors make [`resolve`] fail instead).
    pub warnings: Vec<Diagnostic>,
}

impl Resolved {
    /// The variable called `name`.
    pub fn get(&self, name: &str) -> Option<&ResolvedVar> {
        self.index.get(name).map(|&i| &self.vars[i])
    }

    /// Every variable, in first-definition order (defaults, then components in profile order, then profile env,
    /// then secrets declared only by the caller).
    pub fn vars(&self) -> &[ResolvedVar] {
        &self.vars
    }

    /// The variables whose value is fully known at build time, with their values.
    pub fn literals(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .filter_map(|v| v.value.as_literal().map(|text| (v.name.as_str(), text)))
    }

    /// The variables whose value needs a secret at run time (the secrets themselves included).
    pub fn secret_dependent(&self) -> impl Iterator<Item = &ResolvedVar> {
        self.vars.iter().filter(|v| !v.value.is_literal())
    }

    /// Every secret needed, sorted by name, with who declared it and which variables use it.
    pub fn secrets(&self) -> Vec<SecretUse> {
        let mut uses: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for var in &self.vars {
            if let Origin::Secret { declared_by } = &var.origin {
                uses.entry(&var.name)
                    .or_default()
                    .extend(declared_by.iter().cloned());
            }
        }
        for var in &self.vars {
            if var.is_secret() {
                continue;
            }
            for name in var.value.secret_refs() {
                uses.entry(name)
                    .or_default()
                    .push(format!("variable {}", var.name));
            }
        }
        uses.into_iter()
            .map(|(name, needed_by)| SecretUse {
                name: name.to_owned(),
                needed_by,
            })
            .collect()
    }

    fn push(&mut self, var: ResolvedVar) {
        self.index.insert(var.name.clone(), self.vars.len());
        self.vars.push(var);
    }
}

enum LayerValue {
    Template(Template),
    Secret,
}

struct Layer {
    origin: Origin,
    value: LayerValue,
    /// For diagnostics: the file and the position of the value.
    file: String,
    position: Option<Position>,
}

#[derive(Default)]
struct Pool {
    order: Vec<String>,
    layers: HashMap<String, Vec<Layer>>,
}

impl Pool {
    fn add(&mut self, name: String, layer: Layer) {
        let entry = self.layers.entry(name.clone()).or_default();
        if entry.is_empty() {
            self.order.push(name);
        }
        entry.push(layer);
    }
}

/// Merges the selected component sections (in the profile's order, sections in list order, later wins) over the
/// defaults, applies the profile `env` last, declares the secrets and interpolates every value against the final
/// set. Fails with every error found (missing components and sections, secret values in components, unresolved
/// references, cycles); warnings are in [`Resolved::warnings`] on success and among the diagnostics on failure.
pub fn resolve(set: &ComponentSet, input: &ResolveInput<'_>) -> Result<Resolved, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut pool = Pool::default();
    // Names whose values had errors already reported: references to them are not reported again.
    let mut rejected = BTreeSet::new();

    add_defaults(input, &mut pool, &mut rejected, &mut diags);
    let mut secret_marks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let complete = select_components(
        set,
        input,
        &mut pool,
        &mut secret_marks,
        &mut rejected,
        &mut diags,
    );
    add_profile_env(input, &mut pool, &mut rejected, &mut diags);
    let secrets = declare_secrets(input, secret_marks, &mut pool, &mut diags);

    warn_cross_component_overrides(&pool, &mut diags);
    if !complete {
        // A missing component or section: references into it would only repeat that error.
        return Err(diags);
    }

    let (pool_vars, winners) = pick_winners(pool);
    let secret_names: BTreeSet<String> = secrets.keys().cloned().collect();
    let (values, eval_diags) =
        interpolate::evaluate(&pool_vars, &secret_names, &rejected, input.env_fallback);
    diags.extend(eval_diags);
    if !has_errors(&diags) {
        report_unresolved(&pool_vars, &values, &mut diags);
    }
    if has_errors(&diags) {
        return Err(diags);
    }
    Ok(assemble(pool_vars, winners, values, diags))
}

/// The first layer: each default a service gives a variable (a bad name or template is an error and
/// rejects the name).
fn add_defaults(
    input: &ResolveInput<'_>,
    pool: &mut Pool,
    rejected: &mut BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) {
    let profile_file = input.profile_file;
    for default in input.defaults {
        let what = format!("default for {} from {}", default.name, default.by);
        if let Some(t) = parse_env_template(
            &default.name,
            &default.value,
            &what,
            profile_file,
            None,
            diags,
        ) {
            let origin = Origin::Default {
                by: default.by.clone(),
            };
            pool.add(
                default.name.clone(),
                Layer {
                    origin,
                    value: LayerValue::Template(t),
                    file: profile_file.to_owned(),
                    position: None,
                },
            );
        } else {
            rejected.insert(default.name.clone());
        }
    }
}

/// The last layer of values: the profile's `env` (a bad name or template is an error and rejects the
/// name).
fn add_profile_env(
    input: &ResolveInput<'_>,
    pool: &mut Pool,
    rejected: &mut BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) {
    let profile_file = input.profile_file;
    for var in input.env {
        let what = format!("profile env variable {}", var.name);
        if let Some(t) = parse_env_template(
            &var.name,
            &var.value,
            &what,
            profile_file,
            var.position,
            diags,
        ) {
            let origin = Origin::Profile {
                file: profile_file.to_owned(),
                position: var.position,
            };
            pool.add(
                var.name.clone(),
                Layer {
                    origin,
                    value: LayerValue::Template(t),
                    file: profile_file.to_owned(),
                    position: var.position,
                },
            );
        } else {
            rejected.insert(var.name.clone());
        }
    }
}

/// Secrets: every declared name (by the input or marked in a component) becomes a secret variable on
/// top of its layers; a committed value for one is an error. Returns each secret with who declared it.
fn declare_secrets(
    input: &ResolveInput<'_>,
    secret_marks: BTreeMap<String, Vec<String>>,
    pool: &mut Pool,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Vec<String>> {
    let mut secrets = secret_marks;
    for (name, by) in input.secrets.iter() {
        secrets
            .entry(name.to_owned())
            .or_default()
            .extend(by.iter().cloned());
    }
    for (name, declared_by) in &secrets {
        if let Some(layers) = pool.layers.get(name) {
            for layer in layers {
                if let LayerValue::Template(_) = layer.value {
                    diags.push(
                        Diagnostic::error(
                            &layer.file,
                            layer.position,
                            format!("{name} is a secret (declared by {}) but {} gives it a value", declared_by.join(", "), layer.origin),
                        )
                        .with_help(
                            "secret values must never be committed: remove this value and set it in the git-ignored \
                             secrets file or the environment",
                        ),
                    );
                }
            }
        }
        pool.add(
            name.clone(),
            Layer {
                origin: Origin::Secret {
                    declared_by: declared_by.clone(),
                },
                value: LayerValue::Secret,
                file: String::new(),
                position: None,
            },
        );
    }
    secrets
}

/// The winning layer of each variable, in first-definition order: the evaluator's input, and each
/// winner with the template layers it shadows.
fn pick_winners(mut pool: Pool) -> (Vec<PoolVar>, Vec<(Layer, Vec<Shadowed>)>) {
    let mut winners = Vec::new();
    let mut pool_vars = Vec::new();
    for name in &pool.order {
        let mut layers = pool.layers.remove(name).unwrap_or_default();
        // A secret's layer is last among its own layers; it wins over anything else.
        let winner = match layers
            .iter()
            .rposition(|l| matches!(l.value, LayerValue::Secret))
        {
            Some(i) => layers.remove(i),
            None => match layers.pop() {
                Some(l) => l,
                None => continue,
            },
        };
        let kind = match &winner.value {
            LayerValue::Template(t) => PoolKind::Template(t.clone()),
            LayerValue::Secret => PoolKind::Secret,
        };
        pool_vars.push(PoolVar {
            name: name.clone(),
            kind,
            file: winner.file.clone(),
            position: winner.position,
        });
        let shadowed = layers
            .into_iter()
            .filter_map(|l| match l.value {
                LayerValue::Template(t) => Some(Shadowed {
                    origin: l.origin,
                    raw: t.source(),
                }),
                LayerValue::Secret => None,
            })
            .collect();
        winners.push((winner, shadowed));
    }
    (pool_vars, winners)
}

/// Every failure reports itself; this guards the promise that nothing is ever dropped silently: a
/// variable without a value and without an error gets an internal error.
fn report_unresolved(
    pool_vars: &[PoolVar],
    values: &[interpolate::Evaluated],
    diags: &mut Vec<Diagnostic>,
) {
    for (var, value) in pool_vars.iter().zip(values) {
        if value.is_none() {
            diags.push(Diagnostic::error(
                &var.file,
                var.position,
                format!(
                    "{} could not be resolved (an internal error: please report it)",
                    var.name
                ),
            ));
        }
    }
}

/// The resolved set: each winner with its value, expansions and shadowed layers, `warnings` as given.
fn assemble(
    pool_vars: Vec<PoolVar>,
    winners: Vec<(Layer, Vec<Shadowed>)>,
    values: Vec<interpolate::Evaluated>,
    warnings: Vec<Diagnostic>,
) -> Resolved {
    let mut resolved = Resolved {
        warnings,
        ..Resolved::default()
    };
    for ((pool_var, (winner, shadowed)), value) in pool_vars.into_iter().zip(winners).zip(values) {
        let Some((value, expansions)) = value else {
            continue;
        };
        let raw = match &winner.value {
            LayerValue::Template(t) => Some(t.source()),
            LayerValue::Secret => None,
        };
        resolved.push(ResolvedVar {
            name: pool_var.name,
            value,
            origin: winner.origin,
            raw,
            shadowed,
            expansions,
        });
    }
    resolved
}

fn parse_env_template(
    name: &str,
    value: &str,
    what: &str,
    file: &str,
    position: Option<Position>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Template> {
    if !is_identifier(name) {
        diags.push(
            Diagnostic::error(
                file,
                position,
                format!("invalid variable name `{name}` in {what}"),
            )
            .with_help("variable names are letters, digits and `_`, not starting with a digit"),
        );
        return None;
    }
    match Template::parse(value, Mode::Unquoted, 1) {
        Ok(t) => Some(t),
        Err(e) => {
            let mut d = Diagnostic::error(
                file,
                position,
                format!("{what}: {} (at character {})", e.message, e.column),
            );
            d.help = e.help;
            diags.push(d);
            None
        }
    }
}

fn select_components(
    set: &ComponentSet,
    input: &ResolveInput<'_>,
    pool: &mut Pool,
    secret_marks: &mut BTreeMap<String, Vec<String>>,
    rejected: &mut BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let mut complete = true;
    let mut seen = BTreeSet::new();
    for sel in input.selection {
        let Some(file) = selected_file(set, input, sel, &mut seen, diags) else {
            complete = false;
            continue;
        };
        complete &= add_sections(file, sel, input, pool, secret_marks, rejected, diags);
    }
    complete
}

/// The component file a selection names, or `None` with its error: selected twice, a file with errors
/// of its own, no such component, or no section named.
fn selected_file<'s, 'a>(
    set: &'s ComponentSet,
    input: &ResolveInput<'_>,
    sel: &'a Selection,
    seen: &mut BTreeSet<&'a str>,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'s ComponentFile> {
    let profile = input.profile;
    let profile_file = input.profile_file;
    let name = sel.component.as_str();
    if !seen.insert(name) {
        diags.push(Diagnostic::error(
            profile_file,
            sel.position,
            format!("profile {profile} selects component {name} twice"),
        ));
        return None;
    }
    if set.is_broken(name) {
        // Its file's own errors were reported when it was loaded; this names the profile that needs it.
        diags.push(
            Diagnostic::error(
                profile_file,
                sel.position,
                format!(
                    "profile {profile} selects component {name}, whose file {} cannot be used",
                    set.file_for(name)
                ),
            )
            .with_help(format!(
                "fix the errors reported for {}",
                set.file_for(name)
            )),
        );
        return None;
    }
    let Some(file) = set.get(name) else {
        let suggestion = did_you_mean(name, set.names())
            .map(|s| format!("did you mean \"{s}\"? "))
            .unwrap_or_default();
        diags.push(
            Diagnostic::error(
                profile_file,
                sel.position,
                format!(
                    "profile {profile} selects component \"{name}\", but there is no {}",
                    set.file_for(name)
                ),
            )
            .with_help(format!(
                "{suggestion}the components are {}",
                quoted_list(set.names())
            )),
        );
        return None;
    };
    if sel.sections.is_empty() {
        diags.push(
            Diagnostic::error(
                profile_file,
                sel.position,
                format!("profile {profile} selects no section of component {name}"),
            )
            .with_help(format!(
                "name one section or a list; {} has sections {}",
                file.path,
                section_list(file)
            )),
        );
        return None;
    }
    Some(file)
}

/// Adds the selected sections of `file` to the pool, with the file's and the sections' secret marks
/// and rejected keys. False when a section is selected twice or does not exist (each an error).
fn add_sections(
    file: &ComponentFile,
    sel: &Selection,
    input: &ResolveInput<'_>,
    pool: &mut Pool,
    secret_marks: &mut BTreeMap<String, Vec<String>>,
    rejected: &mut BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let mut complete = true;
    let profile = input.profile;
    let profile_file = input.profile_file;
    let name = sel.component.as_str();
    for mark in &file.secrets {
        let by = format!("{}:{} (component {name})", file.path, mark.position.line);
        secret_marks
            .entry(file.variable(&mark.key))
            .or_default()
            .push(by);
    }
    let mut seen_sections = BTreeSet::new();
    for section_name in &sel.sections {
        if !seen_sections.insert(section_name.as_str()) {
            diags.push(Diagnostic::error(
                profile_file,
                sel.position,
                format!(
                    "profile {profile} selects section \"{section_name}\" of component {name} twice"
                ),
            ));
            complete = false;
            continue;
        }
        let Some(section) = file.section(section_name) else {
            let suggestion = did_you_mean(section_name, file.section_names())
                .map(|s| format!("did you mean \"{s}\"? "))
                .unwrap_or_default();
            diags.push(
                Diagnostic::error(
                    profile_file,
                    sel.position,
                    format!(
                        "profile {profile} selects section \"{section_name}\" of component {name}, which does not exist; \
                         {} has sections {}",
                        file.path,
                        section_list(file)
                    ),
                )
                .with_help(format!("{suggestion}select one of the existing sections or add [{section_name}] to {}", file.path)),
            );
            complete = false;
            continue;
        };
        for mark in &section.secrets {
            let by = format!(
                "{}:{} section [{section_name}]",
                file.path, mark.position.line
            );
            secret_marks
                .entry(file.variable(&mark.key))
                .or_default()
                .push(by);
        }
        rejected.extend(section.rejected.iter().map(|key| file.variable(key)));
        for entry in &section.entries {
            let origin = Origin::Component {
                component: name.to_owned(),
                file: file.path.clone(),
                section: section.name.clone(),
                position: entry.position,
            };
            pool.add(
                file.variable(&entry.key),
                Layer {
                    origin,
                    value: LayerValue::Template(entry.value.clone()),
                    file: file.path.clone(),
                    position: Some(Position::new(entry.position.line, entry.value_column)),
                },
            );
        }
    }
    complete
}

/// Two different components setting the same variable is almost always a namespace clash, not layering.
fn warn_cross_component_overrides(pool: &Pool, diags: &mut Vec<Diagnostic>) {
    for name in &pool.order {
        let Some(layers) = pool.layers.get(name) else {
            continue;
        };
        let mut previous: Option<&Layer> = None;
        for layer in layers {
            if let (Some(prev), Origin::Component { component, .. }) = (previous, &layer.origin)
                && let Origin::Component {
                    component: prev_component,
                    ..
                } = &prev.origin
                && prev_component != component
            {
                diags.push(
                    Diagnostic::warning(
                        &layer.file,
                        layer.position,
                        format!("{name} from component {component} overrides the value from component {prev_component} ({})", prev.origin),
                    )
                    .with_help("give the components different NAMESPACEs, or set the value in the profile env"),
                );
            }
            if matches!(layer.origin, Origin::Component { .. }) {
                previous = Some(layer);
            }
        }
    }
}
