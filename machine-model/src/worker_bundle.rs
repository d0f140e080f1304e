//! The worker bundle (the existing job queue's worker, which every connector runs): the folder it is
//! installed in, its entry script, the files it must hold, the service mapping the machine provides,
//! its install name and its default source. Leaf module: the catalog, the profile, the install recipe
//! and the planner all name these.

/// The folder of the worker bundle under the workspace.
pub(crate) const WORKER_BUNDLE_DIR: &str = "worker-bundled";

/// The worker bundle's entry: one CommonJS file run with node in the bundle folder.
pub const WORKER_BUNDLE_ENTRY: &str = "redis-direct-worker.js";

/// The worker bundle's service mapping, relative to the bundle folder.
pub const WORKER_BUNDLE_MAPPING: &str = "src/config/service-mapping.json";

/// The worker's own service mapping at the studied version, kept as data in this repository
/// (`machine-model/data/service-mapping.json`, a copy of the bundle's `src/config/service-mapping.json`).
/// The machine writes it into an installed bundle that has none (the release tarball, contract §1).
pub const WORKER_SERVICE_MAPPING: &str = include_str!("../data/service-mapping.json");

/// Where [`WORKER_SERVICE_MAPPING`] comes from, as the install log and marker name it.
pub const WORKER_SERVICE_MAPPING_ORIGIN: &str =
    "the machine's copy of the worker's service mapping (machine-model/data/service-mapping.json)";

/// Files an installed worker bundle must have.
pub const WORKER_BUNDLE_FILES: &[&str] =
    &[WORKER_BUNDLE_ENTRY, "package.json", WORKER_BUNDLE_MAPPING];

/// The install name of the worker bundle (`machine-runtime install --services worker-bundle`).
pub const WORKER_BUNDLE_INSTALL: &str = "worker-bundle";

/// The worker bundle's source when neither the profile nor `WORKER_BUNDLE_URL` names one: the latest
/// release tarball of the existing job queue.
pub(crate) const DEFAULT_WORKER_BUNDLE_URL: &str = "https://github.com/stakeordie/emp-job-queue/releases/latest/download/emp-job-queue-worker.tar.gz";
