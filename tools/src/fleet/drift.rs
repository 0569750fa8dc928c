//! Drift across the fleet: one device's window says little (a few hundred samples, one site),
//! the same windows merged across every device serving a model version, or a group of them,
//! show whether the model's world moved. The devices' sketches count values over the
//! reference's own bins, so merging is adding counts, and the merged sketch is scored by the
//! very code the devices run ([`drover_wire::drift::score`]).
//!
//! The reference comes from the bundle (`reference.json`): the server reads the bundles the
//! operator gives it (`--bundles DIR`) into a [`Catalog`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use drover_runtime::bundle::{Limits, read_header, read_payload};
use drover_runtime::reference::ReferenceStats;
use drover_wire::drift::{FeatureRef, Sketch, Thresholds, score};
use drover_wire::manifest::FileRole;
use serde::{Deserialize, Serialize};

use super::registry::Device;

/// One feature's reference, by the name devices report it under.
#[derive(Debug, Clone)]
struct Feature {
    name: String,
    reference: FeatureRef,
}

/// The references of the model versions the server knows, by (model, version).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: BTreeMap<(String, u64), Vec<Feature>>,
}

/// Why a bundle gave no reference.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not a readable bundle.
    #[error("not a bundle: {0}")]
    Container(#[from] drover_runtime::bundle::ContainerError),
    /// It carries no `reference.json` (made without `--reference`).
    #[error("{name} v{version} carries no reference statistics (bundled without --reference)")]
    NoReference {
        /// Model name.
        name: String,
        /// Version.
        version: u64,
    },
    /// Its `reference.json` does not parse, or a feature's bins are unusable.
    #[error("{name} v{version}: reference statistics: {reason}")]
    BadReference {
        /// Model name.
        name: String,
        /// Version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// The directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Catalog {
    /// Reads every `*.drv` in `dir`; a bundle that gives no reference is reported, not fatal
    /// (drift of that version is then judged per device only).
    pub fn load_dir(dir: &Path) -> Result<(Catalog, Vec<String>), CatalogError> {
        let io = |source| CatalogError::Io { path: dir.display().to_string(), source };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "drv"))
            .collect();
        paths.sort();
        let mut catalog = Catalog::default();
        let mut skipped = Vec::new();
        for path in paths {
            let added = std::fs::read(&path)
                .map_err(|source| CatalogError::Io { path: path.display().to_string(), source })
                .and_then(|bytes| catalog.add_bundle(&bytes));
            if let Err(e) = added {
                skipped.push(format!("{}: {e}", path.display()));
            }
        }
        Ok((catalog, skipped))
    }

    /// Takes the reference statistics of one bundle; returns its (model, version).
    pub fn add_bundle(&mut self, bytes: &[u8]) -> Result<(String, u64), CatalogError> {
        let limits = Limits::default();
        let mut r = bytes;
        if r.get(..8) != Some(drover_runtime::bundle::MAGIC.as_slice()) {
            return Err(drover_runtime::bundle::ContainerError::BadMagic.into());
        }
        let header = read_header(&mut r, &limits)?;
        let m = &header.manifest;
        let (name, version) = (m.name.to_string(), m.version);
        let reference = Rc::new(RefCell::new(None::<Vec<u8>>));
        read_payload(&mut r, m, &limits, |f| {
            let sink: Box<dyn std::io::Write> = if f.role == FileRole::ReferenceStats {
                *reference.borrow_mut() = Some(Vec::new());
                Box::new(Collect(reference.clone()))
            } else {
                Box::new(std::io::sink())
            };
            Ok(sink)
        })?;
        let bytes = reference.take().ok_or_else(|| CatalogError::NoReference { name: name.clone(), version })?;
        let bad = |reason: String| CatalogError::BadReference { name: name.clone(), version, reason };
        let stats: ReferenceStats = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        self.add_reference(&name, version, &stats).map_err(bad)?;
        Ok((name, version))
    }

    /// Takes a model version's reference statistics.
    pub fn add_reference(&mut self, model: &str, version: u64, stats: &ReferenceStats) -> Result<(), String> {
        let mut features = Vec::new();
        for i in 0..stats.features.len() {
            let name = stats.feature_name(i);
            let reference = stats.feature_ref(i).map_err(|e| format!("{name}: {e}"))?;
            features.push(Feature { name, reference });
        }
        // The same outputs the agents judge: a classifier's class once, on its label.
        for o in stats.judged_outputs() {
            let values: Vec<i64> = o.classes.keys().copied().collect();
            let counts: Vec<u64> = o.classes.values().copied().collect();
            let reference = FeatureRef::categorical(&values, &counts).map_err(|e| format!("{}: {e}", o.name))?;
            features.push(Feature { name: o.name.clone(), reference });
        }
        self.models.insert((model.to_string(), version), features);
        Ok(())
    }

    /// Whether the server has the reference of this version.
    pub fn knows(&self, model: &str, version: u64) -> bool {
        self.models.contains_key(&(model.to_string(), version))
    }
}

/// Collects the reference file as the payload streams by (its hash is checked at its end).
struct Collect(Rc<RefCell<Option<Vec<u8>>>>);

impl std::io::Write for Collect {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(bytes) = self.0.borrow_mut().as_mut() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A device's latest judged window, kept whole so it can be merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceWindow {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// The per-feature sketches, by feature name.
    pub features: Vec<(String, Sketch)>,
}

/// One feature of a merged window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedFeature {
    /// Feature name.
    pub name: String,
    /// PSI of the merged counts against the reference.
    pub psi: f64,
    /// The statistic that crossed its threshold, if one did.
    pub drifted: Option<String>,
}

/// The latest windows of many devices, merged and scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedDrift {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u64,
    /// `None`: every device serving the version; else one group of them.
    pub group: Option<String>,
    /// Devices whose windows were merged.
    pub devices: u32,
    /// Samples merged.
    pub samples: u64,
    /// The largest PSI over the features.
    pub score: f64,
    /// Per feature.
    pub features: Vec<MergedFeature>,
}

/// Merges the latest judged window of every device, per model version fleet-wide and per
/// group, for the versions whose reference the catalog holds. A window whose feature does not
/// fit the reference (another bin count) is left out of that feature.
pub fn merge<'a>(
    devices: impl Iterator<Item = &'a Device>,
    catalog: &Catalog,
    thresholds: &Thresholds,
) -> Vec<MergedDrift> {
    // (model, version, group) → devices' windows; group "" is the whole fleet.
    let mut scopes: BTreeMap<(String, u64, Option<String>), Vec<&DeviceWindow>> = BTreeMap::new();
    for d in devices {
        let Some(w) = &d.window else { continue };
        if !catalog.knows(&w.model, w.version) {
            continue;
        }
        scopes.entry((w.model.clone(), w.version, None)).or_default().push(w);
        for g in &d.groups {
            scopes.entry((w.model.clone(), w.version, Some(g.clone()))).or_default().push(w);
        }
    }
    let mut out = Vec::new();
    for ((model, version, group), windows) in scopes {
        let Some(features) = catalog.models.get(&(model.clone(), version)) else { continue };
        let mut merged_features = Vec::new();
        let mut samples = 0u64;
        for f in features {
            let mut sum = Sketch::new(f.reference.slots());
            for w in &windows {
                if let Some((_, s)) = w.features.iter().find(|(n, _)| *n == f.name) {
                    // A sketch on other bins (a device with another reference) stays out.
                    let _ = sum.merge(s);
                }
            }
            if sum.n == 0 {
                continue;
            }
            samples = samples.max(u64::from(sum.n));
            let s = score(&f.reference, &sum, thresholds);
            merged_features.push(MergedFeature {
                name: f.name.clone(),
                psi: s.psi,
                drifted: s.drifted.map(|st| format!("{st:?}").to_lowercase()),
            });
        }
        if merged_features.is_empty() {
            continue;
        }
        let score = merged_features.iter().map(|f| f.psi).filter(|p| p.is_finite()).fold(0.0, f64::max);
        out.push(MergedDrift {
            model,
            version,
            group,
            devices: windows.len() as u32,
            samples,
            score,
            features: merged_features,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_runtime::reference::{FeatureLayout, FeatureStats};

    /// One feature, uniform on [0, 10) over ten bins.
    fn stats() -> ReferenceStats {
        ReferenceStats {
            samples: 1000,
            input: "x".into(),
            layout: FeatureLayout::Elements,
            names: Some(vec!["speed".into()]),
            features: vec![FeatureStats {
                count: 1000,
                mean: 5.0,
                std: 2.88,
                min: 0.0,
                max: 10.0,
                edges: (0..=10).map(f64::from).collect(),
                counts: vec![100; 10],
            }],
            outputs: vec![],
        }
    }

    /// A device's window of `n` values drawn evenly from `[lo, hi)`.
    fn window(lo: f32, hi: f32, n: u32) -> DeviceWindow {
        let stats = stats();
        let reference = stats.feature_ref(0).expect("ref");
        let mut sketch = Sketch::new(reference.slots());
        for i in 0..n {
            let x = lo + (hi - lo) * (i as f32 + 0.5) / n as f32;
            sketch.record(reference.slot(x), x);
        }
        DeviceWindow { model: "m".into(), version: 1, features: vec![("speed".into(), sketch)] }
    }

    fn device(id: &str, group: &str, w: DeviceWindow) -> Device {
        Device { id: id.into(), groups: vec![group.into()], window: Some(w), ..Device::default() }
    }

    #[test]
    fn windows_merge_per_version_and_group_and_score_as_a_device_would() {
        let mut catalog = Catalog::default();
        catalog.add_reference("m", 1, &stats()).expect("reference");
        // Each device alone has too few samples to say much; together, north has moved.
        let fleet = [
            device("a", "north", window(5.0, 10.0, 40)),
            device("b", "north", window(5.0, 10.0, 40)),
            device("c", "south", window(0.0, 10.0, 40)),
            device("d", "south", window(0.0, 10.0, 40)),
        ];
        let merged = merge(fleet.iter(), &catalog, &Thresholds::default());
        let find = |g: Option<&str>| merged.iter().find(|m| m.group.as_deref() == g).expect("scope");
        let (all, north, south) = (find(None), find(Some("north")), find(Some("south")));
        assert_eq!((all.devices, all.samples, north.devices, north.samples), (4, 160, 2, 80));
        assert!(north.score > 0.5 && north.features[0].drifted.is_some(), "{north:?}");
        assert!(south.score < 0.05 && south.features[0].drifted.is_none(), "{south:?}");
        assert!(all.score > south.score && all.score < north.score);
        // The merged score is the device's own statistic on the summed counts.
        let mut sum = window(5.0, 10.0, 40).features[0].1.clone();
        sum.merge(&window(5.0, 10.0, 40).features[0].1).expect("merge");
        let reference = stats().feature_ref(0).expect("ref");
        assert_eq!(north.features[0].psi, score(&reference, &sum, &Thresholds::default()).psi);
        // A version without a reference is not merged.
        assert!(merge(fleet.iter(), &Catalog::default(), &Thresholds::default()).is_empty());
    }

    #[test]
    fn a_bundle_without_reference_or_not_a_bundle_is_refused() {
        let mut catalog = Catalog::default();
        assert!(matches!(catalog.add_bundle(b"not a bundle"), Err(CatalogError::Container(_))));
        assert!(matches!(catalog.add_bundle(b""), Err(CatalogError::Container(_))));
    }
}
