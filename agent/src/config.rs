//! The agent's configuration: `/etc/kmodforge/agent.toml` (or `--config FILE`),
//! validated at start-up. Every key is documented in `agent/agent.toml.example`.
//!
//! Every host path hangs off `root`, so the whole agent runs against a temporary
//! root in tests; the `[paths]` table overrides single paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kmodforge_agent::host::HostPaths;
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use serde::Deserialize;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/kmodforge/agent.toml";

/// Why the configuration is unusable; each names the file and, where it applies, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The file as written; unknown keys are errors (a typo must not be ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<String>,
    root: Option<PathBuf>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    modprobe_on_install: bool,
    #[serde(default)]
    require_boot_check: bool,
    #[serde(default)]
    trusted_keys: Vec<String>,
    secure_boot_check: Option<bool>,
    boot_guard: Option<bool>,
    hook_wait_secs: Option<u64>,
    running_kernel: Option<String>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    build_wait_secs: Option<u64>,
    lock_wait_secs: Option<u64>,
    retries: Option<u32>,
    metrics_textfile: Option<PathBuf>,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    module: Vec<RawModule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    modules_dir: Option<PathBuf>,
    boot_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    sys_module: Option<PathBuf>,
    efivars: Option<PathBuf>,
    lockdown: Option<PathBuf>,
    depmod: Option<PathBuf>,
    mokutil: Option<PathBuf>,
    grub_editenv: Option<PathBuf>,
    modprobe: Option<PathBuf>,
    modinfo: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    name: String,
    version: String,
    #[serde(default)]
    required: bool,
}

/// One `[[module]]`: a module the host wants (like `dkms add`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedModule {
    pub name: ModuleName,
    pub version: ModuleVersion,
    /// The host cannot live without it (its only NIC's driver): the boot guard never
    /// lets the host boot a kernel that lacks it.
    pub required: bool,
}

/// How the agent talks to the server.
#[derive(Clone)]
pub struct HttpSettings {
    /// TCP connect timeout of every request (`connect_timeout_secs`, default 10 s).
    pub connect_timeout: Duration,
    /// Timeout of one ordinary request or download (`request_timeout_secs`, default 120 s).
    pub request_timeout: Duration,
    /// How long a sync waits for a build (`build_wait_secs`, default 3600 s).
    pub build_wait: Duration,
    /// Retries after a failed attempt (`retries`, default 3), with exponential backoff.
    pub retries: u32,
    /// The bearer token read from `token_file`, if any.
    pub token: Option<String>,
    /// The CA certificates of `ca_file` (PEM): HTTPS trusts these only.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for HttpSettings {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("build_wait", &self.build_wait)
            .field("retries", &self.retries)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            build_wait: Duration::from_secs(3600),
            retries: 3,
            token: None,
            ca_pem: None,
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (or the default path when it was absent).
    pub source: PathBuf,
    /// Base URL of the server, `http://` or `https://`.
    pub server: Option<String>,
    pub root: PathBuf,
    pub paths: HostPaths,
    /// `modprobe` the module after installing it for the running kernel.
    pub modprobe_on_install: bool,
    /// Install only artifacts whose server-side boot check passed: ask for the check
    /// (`boot_check: true`) on every build request, and have it run on an artifact
    /// without one before installing it (a failed check is refused either way).
    pub require_boot_check: bool,
    /// Manifest keys to trust (`trusted_keys`); empty: manifests are not verified.
    pub trusted_keys: kmodforge_agent::trust::TrustedKeys,
    /// Refuse installs whose signing key this host's kernel would reject
    /// (`secure_boot_check`, default true).
    pub secure_boot_check: bool,
    /// Keep the boot loader's default on the newest kernel that has every required
    /// module (`boot_guard`, default true).
    pub boot_guard: bool,
    /// How long a kernel hook waits for a build before it gives up and leaves the
    /// boot guard in charge (`hook_wait_secs`, default 600 s).
    pub hook_wait: Duration,
    /// How long a command waits for another run's host lock (`lock_wait_secs`,
    /// default 30 s; hooks wait at least 5 minutes).
    pub lock_wait: Duration,
    /// Overrides `uname -r` (tests).
    pub running_kernel: Option<KernelRelease>,
    pub http: HttpSettings,
    pub modules: Vec<WantedModule>,
    /// Where a sync writes its metrics for node_exporter's textfile collector
    /// (`metrics_textfile`, a `*.prom` file; relative paths are under `root`). Unset:
    /// no textfile.
    pub metrics_textfile: Option<PathBuf>,
}

impl Config {
    /// Reads and validates `path`. When `path` is the default and `missing_ok`, an
    /// absent file gives the defaults (for `submit`, which needs only a server).
    pub fn load(path: &Path, missing_ok: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    /// Validates the TOML `text` of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: parse_message(text, &e),
        })?;
        Validator { path }.config(raw)
    }

    /// The server URL, or an error saying how to set it.
    pub fn server(&self) -> Result<&str, ConfigError> {
        self.server.as_deref().ok_or_else(|| ConfigError::Invalid {
            path: self.source.clone(),
            key: "server".into(),
            reason: "not set (set it in the config or pass --server URL)".into(),
        })
    }

    /// Replaces the token (the `--token-file` flag), read and checked like the key.
    pub fn set_token_file(&mut self, file: &Path) -> Result<(), ConfigError> {
        let v = Validator { path: &self.source };
        self.http.token = Some(v.token(file)?);
        Ok(())
    }

    /// Replaces the server URL (the `--server` flag), validated like the key.
    pub fn set_server(&mut self, url: &str) -> Result<(), ConfigError> {
        let v = Validator { path: &self.source };
        self.server = Some(v.server(url)?);
        Ok(())
    }
}

/// `line N (the line): what is wrong`, on one line.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return what;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
    format!("line {line_no} ({line}): {what}")
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let root = raw.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        if !root.is_absolute() {
            return Err(self.invalid("root", format!("{} is not absolute", root.display())));
        }
        let server = raw.server.as_deref().map(|s| self.server(s)).transpose()?;
        let running_kernel = raw
            .running_kernel
            .as_deref()
            .map(|k| {
                KernelRelease::parse(k).map_err(|e| self.invalid("running_kernel", e.to_string()))
            })
            .transpose()?;
        let metrics_textfile = self.textfile(&root, raw.metrics_textfile.as_deref())?;
        Ok(Config {
            source: self.path.to_path_buf(),
            server,
            paths: self.paths(&root, &raw.paths)?,
            root,
            modprobe_on_install: raw.modprobe_on_install,
            require_boot_check: raw.require_boot_check,
            trusted_keys: kmodforge_agent::trust::TrustedKeys::parse(&raw.trusted_keys)
                .map_err(|e| self.invalid("trusted_keys", e))?,
            secure_boot_check: raw.secure_boot_check.unwrap_or(true),
            lock_wait: Duration::from_secs(raw.lock_wait_secs.unwrap_or(30)),
            boot_guard: raw.boot_guard.unwrap_or(true),
            hook_wait: Duration::from_secs(raw.hook_wait_secs.unwrap_or(600).max(1)),
            running_kernel,
            http: self.http(&raw)?,
            modules: self.modules(&raw.module)?,
            metrics_textfile,
        })
    }

    fn server(&self, url: &str) -> Result<String, ConfigError> {
        let ok = ["http://", "https://"]
            .iter()
            .any(|p| url.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if !ok {
            return Err(self.invalid(
                "server",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        Ok(url.trim_end_matches('/').to_string())
    }

    fn http(&self, raw: &RawConfig) -> Result<HttpSettings, ConfigError> {
        let d = HttpSettings::default();
        let secs = |key: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(self.invalid(key, "must be at least 1 (seconds)")),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let retries = raw.retries.unwrap_or(d.retries);
        if retries > 20 {
            return Err(self.invalid("retries", format!("{retries} is more than 20")));
        }
        Ok(HttpSettings {
            connect_timeout: secs(
                "connect_timeout_secs",
                raw.connect_timeout_secs,
                d.connect_timeout,
            )?,
            request_timeout: secs(
                "request_timeout_secs",
                raw.request_timeout_secs,
                d.request_timeout,
            )?,
            build_wait: secs("build_wait_secs", raw.build_wait_secs, d.build_wait)?,
            retries,
            token: raw
                .token_file
                .as_deref()
                .map(|f| self.token(f))
                .transpose()?,
            ca_pem: raw.ca_file.as_deref().map(|f| self.ca(f)).transpose()?,
        })
    }

    /// The PEM certificates of `ca_file`: at least one, each parseable.
    fn ca(&self, file: &Path) -> Result<Vec<u8>, ConfigError> {
        let pem = std::fs::read(file)
            .map_err(|e| self.invalid("ca_file", format!("{}: {e}", file.display())))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => Ok(pem),
            Ok(_) => Err(self.invalid(
                "ca_file",
                format!("{} holds no PEM certificate", file.display()),
            )),
            Err(e) => Err(self.invalid("ca_file", format!("{}: {e}", file.display()))),
        }
    }

    fn token(&self, file: &Path) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| self.invalid("token_file", format!("{}: {e}", file.display())))?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(self.invalid(
                "token_file",
                format!("{} must hold one token on one line", file.display()),
            ));
        }
        Ok(token.to_string())
    }

    /// node_exporter's textfile collector reads `*.prom` files only.
    fn textfile(&self, root: &Path, file: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
        let Some(file) = file else { return Ok(None) };
        if file.extension().is_none_or(|e| e != "prom") {
            return Err(self.invalid(
                "metrics_textfile",
                format!(
                    "{} does not end in .prom (node_exporter's textfile collector reads only *.prom files)",
                    file.display()
                ),
            ));
        }
        Ok(Some(root.join(file)))
    }

    fn paths(&self, root: &Path, raw: &RawPaths) -> Result<HostPaths, ConfigError> {
        let mut p = HostPaths::under(root);
        let dir = |value: &Option<PathBuf>, slot: &mut PathBuf| {
            if let Some(v) = value {
                *slot = if v.is_absolute() {
                    v.clone()
                } else {
                    root.join(v)
                };
            }
        };
        dir(&raw.modules_dir, &mut p.modules_dir);
        dir(&raw.boot_dir, &mut p.boot_dir);
        dir(&raw.state_dir, &mut p.state_dir);
        dir(&raw.sys_module, &mut p.sys_module);
        dir(&raw.efivars, &mut p.efivars);
        dir(&raw.lockdown, &mut p.lockdown);
        for (key, value, slot) in [
            ("paths.depmod", &raw.depmod, &mut p.depmod),
            ("paths.modprobe", &raw.modprobe, &mut p.modprobe),
            ("paths.modinfo", &raw.modinfo, &mut p.modinfo),
            ("paths.mokutil", &raw.mokutil, &mut p.mokutil),
            ("paths.grub_editenv", &raw.grub_editenv, &mut p.grub_editenv),
        ] {
            if let Some(v) = value {
                if !v.is_absolute() {
                    return Err(
                        self.invalid(key, format!("{} is not an absolute path", v.display()))
                    );
                }
                *slot = v.clone();
            }
        }
        Ok(p)
    }

    fn modules(&self, raw: &[RawModule]) -> Result<Vec<WantedModule>, ConfigError> {
        let mut out: Vec<WantedModule> = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let key = |field: &str| format!("module[{i}].{field}");
            let name =
                ModuleName::parse(&m.name).map_err(|e| self.invalid(key("name"), e.to_string()))?;
            let version = ModuleVersion::parse(&m.version)
                .map_err(|e| self.invalid(key("version"), e.to_string()))?;
            if let Some(prev) = out.iter().find(|w| w.name == name) {
                return Err(self.invalid(
                    key("name"),
                    format!(
                        "{name} is already wanted at version {} (one version per module)",
                        prev.version
                    ),
                ));
            }
            out.push(WantedModule {
                name,
                version,
                required: m.required,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("agent.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
            server = "http://127.0.0.1:8080/"
            root = "/tmp/r"
            running_kernel = "6.1.0-47-amd64"
            retries = 1
            metrics_textfile = "var/lib/node_exporter/kmodforge.prom"
            [paths]
            state_dir = "state"
            modules_dir = "/elsewhere/modules"
            depmod = "/usr/sbin/depmod"
            [[module]]
            name = "kmf-hello"
            version = "1.0"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(c.paths.state_dir, Path::new("/tmp/r/state"));
        assert_eq!(c.paths.modules_dir, Path::new("/elsewhere/modules"));
        assert_eq!(c.paths.depmod, Path::new("/usr/sbin/depmod"));
        assert_eq!(c.http.retries, 1);
        assert_eq!(
            c.metrics_textfile.as_deref(),
            Some(Path::new("/tmp/r/var/lib/node_exporter/kmodforge.prom"))
        );
        assert_eq!(c.http.build_wait, Duration::from_secs(3600));
        assert_eq!(c.modules.len(), 1);
        assert_eq!(c.running_kernel.unwrap().as_str(), "6.1.0-47-amd64");
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.root, Path::new("/"));
        assert!(c.server.is_none() && c.modules.is_empty() && !c.modprobe_on_install);
        assert!(!c.require_boot_check && c.metrics_textfile.is_none());
        assert!(
            parse("require_boot_check = true")
                .unwrap()
                .require_boot_check
        );
        assert!(err("require_boot_check = 1").contains("require_boot_check"));
        assert!(c.server().unwrap_err().to_string().contains("`server`"));
    }

    #[test]
    fn the_example_parses() {
        let c = parse(include_str!("../agent.toml.example")).unwrap();
        assert!(!c.require_boot_check && c.modules.len() == 1);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"server = "ftp://x""#, "`server`"),
            (r#"root = "rel""#, "`root`"),
            ("retries = 50", "`retries`"),
            ("build_wait_secs = 0", "`build_wait_secs`"),
            (r#"running_kernel = "x/y""#, "`running_kernel`"),
            ("[paths]\ndepmod = \"depmod\"", "`paths.depmod`"),
            ("[[module]]\nname = \"a b\"\nversion = \"1\"", "`module[0].name`"),
            ("[[module]]\nname = \"a\"\nversion = \"/\"", "`module[0].version`"),
            (
                "[[module]]\nname = \"a\"\nversion = \"1\"\n[[module]]\nname = \"a\"\nversion = \"2\"",
                "`module[1].name`",
            ),
            (r#"token_file = "/nonexistent/token""#, "`token_file`"),
            (r#"metrics_textfile = "/var/lib/x/kmodforge.txt""#, "`metrics_textfile`"),
            ("serverr = 1", "serverr"),
            ("[paths]\nfoo = \"x\"", "foo"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
