//! Languages and templates. Every user-visible string goes through a catalog
//! (`templates/i18n/{lang}.json`, flat `"key": "text"`); templates call `t(key="…")`.
//! One `Tera` per language is built once at start-up with its own `t`, so templates never
//! pass the language around.

use std::collections::HashMap;

use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload, http::header};
use serde_json::Value;
use tera::{Context, Tera};

pub const LANG_COOKIE: &str = "tailor_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    En,
    ZhCn,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::ZhCn];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    /// Accepts `en`, `en-GB`, `zh`, `zh-CN`, `zh-Hans`… case-insensitively.
    pub fn parse(tag: &str) -> Option<Lang> {
        let tag = tag.trim().to_ascii_lowercase();
        let primary = tag.split(['-', '_']).next().unwrap_or("");
        match primary {
            "en" => Some(Lang::En),
            // Traditional-script tags are not Simplified Chinese; fall through to English.
            "zh" if !(tag.contains("hant") || tag.ends_with("-tw") || tag.ends_with("-hk")) => {
                Some(Lang::ZhCn)
            }
            _ => None,
        }
    }

    /// The best supported language of an `Accept-Language` header, by quality.
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut ranked: Vec<(f32, Lang)> = header
            .split(',')
            .filter_map(|part| {
                let mut pieces = part.split(';');
                let lang = Lang::parse(pieces.next()?)?;
                let q = pieces
                    .find_map(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.parse::<f32>().ok())
                    })
                    .unwrap_or(1.0);
                (q > 0.0).then_some((q, lang))
            })
            .collect();
        // Stable sort keeps header order among equal qualities.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.first().map(|(_, lang)| *lang)
    }

    pub fn from_request(req: &HttpRequest) -> Lang {
        req.cookie(LANG_COOKIE)
            .and_then(|c| Lang::parse(c.value()))
            .or_else(|| {
                req.headers()
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Lang::from_accept_language)
            })
            .unwrap_or(Lang::En)
    }
}

impl FromRequest for Lang {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Lang, actix_web::Error>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(Lang::from_request(req)))
    }
}

const CATALOG_EN: &str = include_str!("../../../templates/i18n/en.json");
const CATALOG_ZH_CN: &str = include_str!("../../../templates/i18n/zh-CN.json");

pub fn catalog_source(lang: Lang) -> &'static str {
    match lang {
        Lang::En => CATALOG_EN,
        Lang::ZhCn => CATALOG_ZH_CN,
    }
}

pub fn catalog(lang: Lang) -> anyhow::Result<HashMap<String, String>> {
    Ok(serde_json::from_str(catalog_source(lang))?)
}

/// Templates compiled into the binary, so it runs from any folder.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../../templates/base.html")),
    (
        "signin.html",
        include_str!("../../../templates/signin.html"),
    ),
    (
        "signup.html",
        include_str!("../../../templates/signup.html"),
    ),
    (
        "dashboard.html",
        include_str!("../../../templates/dashboard.html"),
    ),
    (
        "members.html",
        include_str!("../../../templates/members.html"),
    ),
    (
        "invitation.html",
        include_str!("../../../templates/invitation.html"),
    ),
    ("error.html", include_str!("../../../templates/error.html")),
    (
        "datasets.html",
        include_str!("../../../templates/datasets.html"),
    ),
    (
        "dataset.html",
        include_str!("../../../templates/dataset.html"),
    ),
    (
        "blueprints.html",
        include_str!("../../../templates/blueprints.html"),
    ),
    (
        "blueprint.html",
        include_str!("../../../templates/blueprint.html"),
    ),
    ("jobs.html", include_str!("../../../templates/jobs.html")),
    ("job.html", include_str!("../../../templates/job.html")),
    (
        "models.html",
        include_str!("../../../templates/models.html"),
    ),
    ("model.html", include_str!("../../../templates/model.html")),
    (
        "model_version.html",
        include_str!("../../../templates/model_version.html"),
    ),
    (
        "model_compare.html",
        include_str!("../../../templates/model_compare.html"),
    ),
    (
        "api_keys.html",
        include_str!("../../../templates/api_keys.html"),
    ),
    (
        "api_keys_key.html",
        include_str!("../../../templates/api_keys_key.html"),
    ),
    (
        "api_keys_audit.html",
        include_str!("../../../templates/api_keys_audit.html"),
    ),
];

pub struct Templates {
    by_lang: HashMap<Lang, Tera>,
}

impl Templates {
    pub fn load() -> anyhow::Result<Templates> {
        let mut by_lang = HashMap::new();
        for lang in Lang::ALL {
            let mut tera = Tera::default();
            tera.add_raw_templates(TEMPLATES.iter().copied())?;
            let strings = catalog(lang)?;
            tera.register_function("t", move |args: &HashMap<String, Value>| {
                let key = args
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| tera::Error::msg("t() needs key=\"…\""))?;
                strings
                    .get(key)
                    .map(|s| Value::String(s.clone()))
                    .ok_or_else(|| tera::Error::msg(format!("no catalog entry `{key}`")))
            });
            by_lang.insert(lang, tera);
        }
        Ok(Templates { by_lang })
    }

    pub fn render(
        &self,
        lang: Lang,
        name: &str,
        context: &Context,
    ) -> Result<String, tailor_core::Error> {
        let mut context = context.clone();
        context.insert("lang", lang.code());
        self.by_lang[&lang]
            .render(name, &context)
            .map_err(|e| anyhow::anyhow!("rendering {name}: {e:?}").into())
    }

    pub fn page(
        &self,
        lang: Lang,
        name: &str,
        context: &Context,
    ) -> Result<HttpResponse, tailor_core::Error> {
        Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(self.render(lang, name, context)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_best_supported() {
        assert_eq!(
            Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"),
            Some(Lang::ZhCn)
        );
        assert_eq!(
            Lang::from_accept_language("fr, en;q=0.5, zh;q=0.4"),
            Some(Lang::En)
        );
        assert_eq!(Lang::from_accept_language("de"), None);
        assert_eq!(Lang::from_accept_language("zh-TW"), None);
    }

    #[test]
    fn catalogs_have_the_same_keys_and_every_template_key_exists() {
        let en = catalog(Lang::En).unwrap();
        let zh = catalog(Lang::ZhCn).unwrap();
        let mut en_keys: Vec<_> = en.keys().collect();
        let mut zh_keys: Vec<_> = zh.keys().collect();
        en_keys.sort();
        zh_keys.sort();
        assert_eq!(en_keys, zh_keys);
        for (name, source) in TEMPLATES {
            for piece in source.split("t(key=\"").skip(1) {
                let key = piece.split('"').next().unwrap();
                // `t(key="role." ~ role)`: a prefix completed at render time.
                let known = if key.ends_with('.') {
                    en.keys().any(|k| k.starts_with(key))
                } else {
                    en.contains_key(key)
                };
                assert!(known, "{name} uses `{key}`, missing from the catalogs");
            }
        }
    }
}
