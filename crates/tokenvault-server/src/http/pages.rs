//! The Connect UI: the pages an end user sees on a connect link (the
//! integration and the access asked for, a picker, the result of the flow),
//! rendered from `templates/` in the application's theme. Views only: the
//! flow itself is `tokenvault::connect::ConnectFlow`, driven by `flows`.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use tokenvault::integrations::Integration;
use tokenvault::oauth_state::{FlowOutcome, FlowStatus, StateRecord};
use url::Url;

use super::AppState;
use super::error::{ApiError, ErrorCode};

/// How the pages look: from `ui_*` configuration.
#[derive(Debug, Clone)]
pub struct Theme {
    pub app_name: String,
    pub logo_url: Option<String>,
    /// `#rrggbb`, validated: it is written into `/ui/theme.css`.
    pub accent: String,
    pub support_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error("ui_accent_color: {0:?} is not a colour like #2f5bd3")]
    Accent(String),
    #[error("{0}: only https: (or data:, and http: outside production) URLs are shown")]
    Url(&'static str),
    #[error("ui_app_name: must be 1 to 80 characters without control characters")]
    AppName,
}

impl Theme {
    pub fn from_config(config: &crate::config::Config) -> Result<Self, ThemeError> {
        let accent = &config.ui_accent_color;
        let valid_accent = accent.len() == 7
            && accent.starts_with('#')
            && accent[1..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_accent {
            return Err(ThemeError::Accent(accent.clone()));
        }
        let name = config.ui_app_name.trim();
        if name.is_empty() || name.chars().count() > 80 || name.chars().any(char::is_control) {
            return Err(ThemeError::AppName);
        }
        let shown = |url: &Option<Url>, key: &'static str, data_ok: bool| {
            url.as_ref()
                .map(|url| match url.scheme() {
                    "https" => Ok(url.to_string()),
                    "data" if data_ok => Ok(url.to_string()),
                    "http" if !config.is_production() => Ok(url.to_string()),
                    _ => Err(ThemeError::Url(key)),
                })
                .transpose()
        };
        Ok(Self {
            app_name: name.to_owned(),
            logo_url: shown(&config.ui_logo_url, "ui_logo_url", true)?,
            accent: accent.to_ascii_lowercase(),
            support_url: shown(&config.ui_support_url, "ui_support_url", false)?,
        })
    }
}

/// Headers of every Connect UI answer: nothing cached (a callback URL
/// carries a code), no `Referer` leaves, nothing framed, no script but our
/// own file, no style but our stylesheets, images only from ourselves, the
/// configured logo's origin or `data:`.
pub fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' https: data:; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

struct ScopeLine {
    words: String,
    raw: String,
}

/// An integration's icon: its initial on the catalog entry's brand colour,
/// or on the app's accent colour (the generic icon) when it has none.
pub struct Icon {
    initial: String,
    color: Option<String>,
    /// Dark text on a light brand colour.
    dark: bool,
}

impl Icon {
    pub fn of(name: &str, spec: Option<&tokenvault::providers::ProviderSpec>) -> Self {
        let color = spec.and_then(|spec| spec.brand_color.clone());
        let dark = color.as_deref().is_some_and(is_light);
        Self {
            initial: initial(name),
            color,
            dark,
        }
    }
}

impl Icon {
    /// The inline SVG (decorative: the name is written beside it). Safe
    /// to emit unescaped: the initial is one alphanumeric character and
    /// the colour a validated `#rrggbb`.
    pub fn svg(&self) -> String {
        let (class, fill) = match &self.color {
            Some(color) => ("icon", format!(r#" fill="{color}""#)),
            None => ("icon generic", String::new()),
        };
        let text_class = if self.dark { r#" class="dark""# } else { "" };
        let initial = &self.initial;
        format!(
            r#"<svg class="{class}" viewBox="0 0 40 40" aria-hidden="true"><rect width="40" height="40" rx="9"{fill}/><text x="20" y="26.5" text-anchor="middle"{text_class}>{initial}</text></svg>"#
        )
    }
}

/// Relative luminance (WCAG) above which white text is hard to read.
fn is_light(color: &str) -> bool {
    let channel = |i: usize| {
        let value = f64::from(u8::from_str_radix(&color[i..i + 2], 16).unwrap_or(0)) / 255.0;
        if value <= 0.03928 {
            value / 12.92
        } else {
            ((value + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5) > 0.4
}

struct Choice {
    name: String,
    icon: Icon,
    start_url: String,
    scopes: Vec<ScopeLine>,
}

#[derive(Template)]
#[template(path = "connect.html")]
struct ConnectPage<'a> {
    theme: &'a Theme,
    heading: String,
    lead: String,
    choices: Vec<Choice>,
    expires: Option<String>,
    back: Option<String>,
}

#[derive(Template)]
#[template(path = "result.html")]
struct ResultPage<'a> {
    theme: &'a Theme,
    tone: &'static str,
    heading: String,
    sentence: String,
    next: String,
    back: Option<String>,
    code: Option<String>,
    request_id: String,
    /// In a `connect.js` popup: what `/ui/popup.js` posts to the opener.
    popup: Option<PopupMessage>,
}

/// The outcome a popup's result page posts to its opener's origin.
struct PopupMessage {
    origin: String,
    status: String,
    integration: String,
    connection_id: String,
    error: String,
}

impl PopupMessage {
    fn new(outcome: &FlowOutcome, session: Option<&StateRecord>) -> Option<Self> {
        let session = session?;
        let origin = session.popup_origin.clone()?;
        if outcome.status == FlowStatus::Started {
            return None;
        }
        let status = serde_json::to_value(outcome.status)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))?;
        Some(Self {
            origin,
            status,
            integration: session.integration.to_string(),
            connection_id: outcome.connection_id.clone().unwrap_or_default(),
            error: outcome.code.clone().unwrap_or_default(),
        })
    }
}

fn render(template: &impl Template, status: StatusCode) -> Response {
    match template.render() {
        Ok(page) => (status, Html(page)).into_response(),
        Err(err) => ApiError::internal(err).into_response(),
    }
}

/// The integration's scopes as the page lists them: plain words from the
/// catalog where it has them, the raw scope otherwise (and as a tooltip).
fn scope_lines(integration: &Integration, requested: &[String]) -> Vec<ScopeLine> {
    let scopes = if requested.is_empty() {
        integration.default_scopes()
    } else {
        requested
    };
    scopes
        .iter()
        .map(|raw| ScopeLine {
            words: integration
                .spec()
                .describe_scope(raw)
                .unwrap_or(raw)
                .to_owned(),
            raw: raw.clone(),
        })
        .collect()
}

fn initial(name: &str) -> String {
    name.chars()
        .find(|c| c.is_alphanumeric())
        .map_or_else(|| "?".into(), |c| c.to_uppercase().collect())
}

/// `GET /connect/{id}` for a session that shows a page: the integration(s)
/// offered, what each would let the application do, a button each.
/// `popup`: the opener's origin when `connect.js` opened the link (carried
/// on to the button's URL).
pub fn connect_page(
    state: &AppState,
    session_id: &str,
    session: &StateRecord,
    popup: Option<&str>,
) -> Response {
    let keys = if session.offered.is_empty() {
        std::slice::from_ref(&session.integration)
    } else {
        &session.offered
    };
    let choices: Vec<Choice> = keys
        .iter()
        .filter_map(|key| state.integrations.get(key))
        .map(|integration| {
            let name = integration.spec().display_name.clone();
            let mut start = state
                .settings
                .public_url
                .join(&format!("connect/{session_id}/start"))
                .expect("a session id is URL-safe");
            start
                .query_pairs_mut()
                .append_pair("integration", integration.key().as_str());
            if let Some(origin) = popup {
                start.query_pairs_mut().append_pair("popup", origin);
            }
            Choice {
                icon: Icon::of(&name, Some(integration.spec())),
                start_url: start.to_string(),
                scopes: scope_lines(&integration, &session.scopes),
                name,
            }
        })
        .collect();
    let theme = &state.theme;
    let (heading, lead) = match choices.as_slice() {
        [only] if session.reconnect => (
            format!("Reconnect your {} account", only.name),
            format!(
                "{} needs you to sign in to {} again to keep its access to your account.",
                theme.app_name, only.name
            ),
        ),
        [only] => (
            format!("Connect your {} account", only.name),
            format!(
                "{} asks to connect to your {} account.",
                theme.app_name, only.name
            ),
        ),
        _ => (
            "Choose an account to connect".to_owned(),
            format!(
                "{} asks to connect to one of these services.",
                theme.app_name
            ),
        ),
    };
    let expires = session.created_at
        + chrono::Duration::from_std(state.settings.state_ttl).unwrap_or_default();
    let page = ConnectPage {
        theme,
        heading,
        lead,
        choices,
        expires: Some(time_of_day(expires)),
        back: session.redirect_to.clone(),
    };
    render(&page, StatusCode::OK)
}

fn time_of_day(at: DateTime<Utc>) -> String {
    at.format("%H:%M UTC").to_string()
}

/// What a result page says.
pub enum Shown<'a> {
    /// A flow's outcome (reload-safe: the same page each time).
    Outcome(&'a FlowOutcome),
    /// The link is unknown or its time is up.
    Expired,
}

/// The page that ends a flow, or that an expired or used link shows.
/// `session`: the flow's session when known (its integration and
/// `redirect_to` for "Back to the app").
pub fn result_page(state: &AppState, shown: Shown<'_>, session: Option<&StateRecord>) -> Response {
    let theme = &state.theme;
    let app = &theme.app_name;
    let name = session
        .and_then(|s| state.integrations.get(&s.integration))
        .map_or_else(
            || "the service".to_owned(),
            |i| i.spec().display_name.clone(),
        );
    let again = format!("To try again, start from {app}: it gives you a new link.");
    let (status, tone, heading, sentence, next, code) = match shown {
        Shown::Outcome(outcome) => match outcome.status {
            FlowStatus::Connected => (
                StatusCode::OK,
                "ok",
                if session.is_some_and(|s| s.reconnect) {
                    format!("{name} reconnected")
                } else {
                    format!("{name} connected")
                },
                format!("Your {name} account is now connected to {app}."),
                if session.and_then(|s| s.redirect_to.as_ref()).is_some() {
                    format!("You can go back to {app}.")
                } else {
                    "You can close this window.".to_owned()
                },
                None,
            ),
            FlowStatus::Denied => (
                StatusCode::OK,
                "warn",
                "Connection cancelled".to_owned(),
                format!("You declined access on {name}, so nothing was connected."),
                format!("If that was a mistake, start again from {app}."),
                outcome.code.clone(),
            ),
            FlowStatus::Failed => (
                StatusCode::OK,
                "error",
                format!("{name} could not be connected"),
                format!(
                    "Something went wrong while connecting your {name} account; nothing was connected."
                ),
                again,
                outcome.code.clone(),
            ),
            FlowStatus::ConfirmationRequired => (
                StatusCode::OK,
                "ok",
                "Almost done".to_owned(),
                format!("Go back to {app} to finish connecting your {name} account."),
                String::new(),
                None,
            ),
            FlowStatus::Started => (
                StatusCode::BAD_REQUEST,
                "warn",
                "This link was already used".to_owned(),
                "A connect link works only once, and this one was opened before.".to_owned(),
                format!("If you did not finish connecting, start again from {app}."),
                Some(ErrorCode::InvalidState.as_str().to_owned()),
            ),
        },
        Shown::Expired => (
            StatusCode::BAD_REQUEST,
            "warn",
            "This link has expired".to_owned(),
            "Connect links work once and only for a short while.".to_owned(),
            again,
            Some(ErrorCode::InvalidState.as_str().to_owned()),
        ),
    };
    let popup = match shown {
        Shown::Outcome(outcome) => PopupMessage::new(outcome, session),
        Shown::Expired => None,
    };
    let page = ResultPage {
        theme,
        tone,
        heading,
        sentence,
        next,
        popup,
        back: session.and_then(|s| s.redirect_to.clone()),
        code,
        request_id: super::error::request_id(),
    };
    render(&page, status)
}

/// An error on a browser route, as a page: the consent the user refused,
/// or what went wrong in the service's own words.
pub fn error_page(state: &AppState, err: &ApiError) -> Response {
    let theme = &state.theme;
    let app = &theme.app_name;
    let (tone, heading, sentence) = if err.code == ErrorCode::AccessDenied {
        (
            "warn",
            "Connection cancelled".to_owned(),
            "You declined access, so nothing was connected.".to_owned(),
        )
    } else {
        (
            "error",
            "Connection not completed".to_owned(),
            err.message.clone(),
        )
    };
    let page = ResultPage {
        theme,
        tone,
        heading,
        sentence,
        next: format!("To try again, start from {app}: it gives you a new link."),
        back: None,
        popup: None,
        code: Some(err.code.as_str().to_owned()),
        request_id: super::error::request_id(),
    };
    let mut response = render(&page, err.status);
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage<'a> {
    theme: &'a Theme,
    name: String,
    icon: Icon,
    user_code: String,
    /// Only an `http(s)` address is made a link and a QR code.
    verification_uri: Option<String>,
    verification_shown: String,
    qr_svg: Option<String>,
    status: &'static str,
    message: String,
    status_url: String,
}

/// The QR code of `data` as an inline SVG (dark modules as one path), or
/// `None` when it does not fit a QR code.
pub fn qr_svg(data: &str) -> Option<String> {
    use qrcode::render::svg;
    let code = qrcode::QrCode::new(data.as_bytes()).ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build();
    // Inline in HTML: no XML declaration; a role and name for screen readers.
    let start = image.find("<svg")?;
    Some(image[start..].replacen(
        "<svg",
        "<svg class=\"qr\" role=\"img\" aria-label=\"QR code of the sign-in address\"",
        1,
    ))
}

/// `GET /device/{id}` for a browser.
pub fn device_page(
    state: &AppState,
    session: &tokenvault::device::DeviceSession,
    status: &super::device::PageStatus,
) -> Response {
    let integration = state.integrations.get(&session.integration);
    let name = integration.as_ref().map_or_else(
        || session.integration.to_string(),
        |i| i.spec().display_name.clone(),
    );
    let shown = session
        .shown
        .clone()
        .unwrap_or(tokenvault::device::ShownCode {
            user_code: String::new(),
            verification_uri: String::new(),
            verification_uri_complete: None,
        });
    let web = |raw: &str| {
        Url::parse(raw)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http"))
            .map(|url| url.to_string())
    };
    let verification_uri = web(&shown.verification_uri);
    // The QR code carries the code too when the provider gives such a URL.
    let qr_target = shown
        .verification_uri_complete
        .as_deref()
        .and_then(web)
        .or_else(|| verification_uri.clone());
    let page = DevicePage {
        theme: &state.theme,
        icon: Icon::of(&name, integration.as_ref().map(|i| i.spec())),
        name,
        user_code: shown.user_code,
        verification_shown: verification_uri.as_deref().map_or(
            shown.verification_uri.clone(),
            |uri| {
                uri.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned()
            },
        ),
        verification_uri,
        qr_svg: qr_target.as_deref().and_then(qr_svg),
        status: status.status.as_str(),
        message: status.message.clone(),
        status_url: format!("/device/{}/status", session.id),
    };
    render(&page, StatusCode::OK)
}

const STYLESHEET: &str = include_str!("../../assets/connect.css");
const CONNECT_JS: &str = include_str!("../../assets/connect.js");
const POPUP_JS: &str = include_str!("../../assets/popup.js");
const DEVICE_JS: &str = include_str!("../../assets/device.js");

/// `GET /ui/device.js`: the device page's live status.
pub async fn device_js() -> Response {
    static_asset("text/javascript; charset=utf-8", DEVICE_JS.to_owned())
}

/// `GET /connect.js`: the popup helper an application's page loads.
pub async fn connect_js() -> Response {
    static_asset("text/javascript; charset=utf-8", CONNECT_JS.to_owned())
}

/// `GET /ui/popup.js`: on a popup's result page, posts the outcome to the
/// opener.
pub async fn popup_js() -> Response {
    static_asset("text/javascript; charset=utf-8", POPUP_JS.to_owned())
}

/// `GET /ui/connect.css`: the pages' stylesheet (cached for an hour).
pub async fn stylesheet() -> Response {
    static_asset("text/css; charset=utf-8", STYLESHEET.to_owned())
}

/// `GET /ui/theme.css`: the configured accent colour.
pub async fn theme_css(State(state): State<AppState>) -> Response {
    static_asset(
        "text/css; charset=utf-8",
        format!(":root {{ --accent: {}; }}\n", state.theme.accent),
    )
}

pub(crate) fn static_asset(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A flow's outcome for a program (`Accept` without `text/html`).
pub fn outcome_json(outcome: &FlowOutcome, session: &StateRecord) -> Response {
    let body = serde_json::json!({
        "status": outcome.status,
        "integration": session.integration,
        "connection_id": outcome.connection_id,
        "error": outcome.code,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
