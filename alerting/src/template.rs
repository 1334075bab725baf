//! Annotation and message templates: `{{ name }}` is replaced by the label
//! `name` (also `{{ $labels.name }}` and `{{ labels.name }}`), `{{ value }}`
//! (or `{{ $value }}`) by the instance's value. A rule's annotations may
//! only name what its instances have (`rules check` and loading refuse
//! others, see `config::compile`); in message templates unknown names
//! become empty.

use crate::matcher::Labels;

/// A template's parts: text as it is, and the names of `{{ ... }}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            // An unclosed `{{` is text.
            out.push(Piece::Text(&rest[start..]));
            return out;
        };
        let name = after[..end].trim();
        let name = name.strip_prefix('$').unwrap_or(name);
        out.push(Piece::Name(name.strip_prefix("labels.").unwrap_or(name)));
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    out
}

pub fn render(template: &str, labels: &Labels, value: f64) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Name("value") => out.push_str(&format_value(value)),
            Piece::Name(name) => out.push_str(labels.get(name).map_or("", String::as_str)),
        }
    }
    out
}

/// The names a template uses (`value` included), in order.
pub fn names(template: &str) -> Vec<&str> {
    pieces(template)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Name(n) => Some(n),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Integers without decimals, others with up to four.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_value() {
        let l: Labels = [("host".to_string(), "web-1".to_string())].into();
        assert_eq!(render("CPU {{ value }} on {{ host }}", &l, 97.25), "CPU 97.25 on web-1");
        assert_eq!(render("{{$labels.host}}/{{ $value }}", &l, 3.0), "web-1/3");
        assert_eq!(render("{{ nope }}x", &l, 1.0), "x");
        assert_eq!(render("open {{ host", &l, 1.0), "open {{ host");
        assert_eq!(format_value(1.0 / 3.0), "0.3333");
        assert_eq!(
            names("{{ value }} on {{ $labels.host }}, {{ humanize $value }} {{ open"),
            ["value", "host", "humanize $value"]
        );
    }
}
