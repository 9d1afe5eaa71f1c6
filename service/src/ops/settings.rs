//! Result settings: which block, which serializer, and whether to persist at all.
//!
//! The rules, as Prefect applies them:
//! - storage: the task's `result_storage`, else the flow's, else the server's default block;
//! - serializer: the task's `result_serializer`, else the flow's, else the server default;
//! - persist: the task's explicit `persist_result`, else the flow's explicit value, else
//!   true when a feature of the task needs it (retries > 0, a cache key, or an explicit
//!   storage key: Prefect 3 persists a task with a `result_storage_key`), else the
//!   server's `persist_by_default` (false unless configured, as in Prefect).
//!   Only explicit values are inherited: a flow's retries do not make its tasks persist.
//! - `persist_result = false` always wins. A cache key (or an explicit storage key) with
//!   persistence off is a contradiction and is refused.

use crate::error::{Error, Result};
use crate::formats::serializer::SerializerConfig;

/// One level's settings (a task's, or a flow's).
#[derive(Debug, Clone, Default)]
pub struct ResultSettings {
    pub persist_result: Option<bool>,
    pub result_storage: Option<String>,
    pub result_serializer: Option<SerializerConfig>,
    pub retries: u32,
    pub cache_key: Option<String>,
}

/// The settings that apply to one result.
#[derive(Debug, Clone)]
pub struct EffectiveSettings {
    pub persist: bool,
    /// Block slug; empty means the server's default block.
    pub storage: String,
    pub serializer: SerializerConfig,
    pub cache_key: Option<String>,
}

/// The server's defaults.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub serializer: SerializerConfig,
    pub persist_by_default: bool,
}

/// Applies the inheritance rules. `explicit_key` is a storage key the request names.
pub fn resolve(
    task: &ResultSettings,
    flow: Option<&ResultSettings>,
    defaults: &Defaults,
    explicit_key: bool,
) -> Result<EffectiveSettings> {
    let needs_persistence = task.retries > 0 || task.cache_key.is_some() || explicit_key || defaults.persist_by_default;
    let persist = task.persist_result.or_else(|| flow.and_then(|f| f.persist_result)).unwrap_or(needs_persistence);
    if !persist && task.cache_key.is_some() {
        return Err(Error::InvalidSettings(
            "a cache key needs a persisted result, but persist_result is false; drop the cache key or persist the result"
                .into(),
        ));
    }
    if !persist && explicit_key {
        return Err(Error::InvalidSettings(
            "a storage key was given for a result that is not persisted (persist_result is false)".into(),
        ));
    }
    let storage =
        task.result_storage.clone().or_else(|| flow.and_then(|f| f.result_storage.clone())).unwrap_or_default();
    let serializer = task
        .result_serializer
        .clone()
        .or_else(|| flow.and_then(|f| f.result_serializer.clone()))
        .unwrap_or_else(|| defaults.serializer.clone());
    Ok(EffectiveSettings { persist, storage, serializer, cache_key: task.cache_key.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pickle() -> Defaults {
        Defaults { serializer: SerializerConfig::from_type("pickle").unwrap(), persist_by_default: false }
    }

    #[test]
    fn seed_case_1_task_inherits_flow_persistence_and_storage() {
        let flow = ResultSettings {
            persist_result: Some(true),
            result_storage: Some("s3-bucket/prod".into()),
            ..Default::default()
        };
        let eff = resolve(&ResultSettings::default(), Some(&flow), &pickle(), false).unwrap();
        assert!(eff.persist);
        assert_eq!(eff.storage, "s3-bucket/prod");
    }

    #[test]
    fn seed_case_2_explicit_false_beats_retries_and_refuses_cache_keys() {
        let task = ResultSettings { persist_result: Some(false), retries: 3, ..Default::default() };
        assert!(!resolve(&task, None, &pickle(), false).unwrap().persist);
        let flow = ResultSettings { persist_result: Some(true), ..Default::default() };
        assert!(!resolve(&task, Some(&flow), &pickle(), false).unwrap().persist);
        let keyed = ResultSettings { cache_key: Some("k".into()), ..task };
        assert!(matches!(resolve(&keyed, None, &pickle(), false), Err(Error::InvalidSettings(_))));
    }

    #[test]
    fn seed_case_3_flow_retries_persist_the_flow_only() {
        let flow = ResultSettings { retries: 2, ..Default::default() };
        let as_flow = resolve(&flow, None, &pickle(), false).unwrap();
        assert!(as_flow.persist);
        assert_eq!(as_flow.storage, "");
        assert_eq!(as_flow.serializer, pickle().serializer);
        let plain_task = resolve(&ResultSettings::default(), Some(&flow), &pickle(), false).unwrap();
        assert!(!plain_task.persist);
    }

    #[test]
    fn only_explicit_values_are_inherited() {
        let json = SerializerConfig::from_type("json").unwrap();
        let flow =
            ResultSettings { persist_result: Some(false), result_serializer: Some(json.clone()), ..Default::default() };
        let task = ResultSettings { retries: 1, ..Default::default() };
        let eff = resolve(&task, Some(&flow), &pickle(), false).unwrap();
        assert!(!eff.persist, "the flow's explicit false is inherited before the task's inferred true");
        assert_eq!(eff.serializer, json);
        let cached = ResultSettings { cache_key: Some("k".into()), ..Default::default() };
        assert!(resolve(&cached, None, &pickle(), false).unwrap().persist);
        let by_default = Defaults { persist_by_default: true, ..pickle() };
        assert!(resolve(&ResultSettings::default(), None, &by_default, false).unwrap().persist);
        let off = ResultSettings { persist_result: Some(false), ..Default::default() };
        assert!(!resolve(&off, None, &by_default, false).unwrap().persist);
    }
}
