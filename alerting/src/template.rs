//! Annotation and message templates, in the subset of Go's template
//! language that Prometheus rule files use:
//!
//! - `{{ name }}` is the label `name` (also `{{ $labels.name }}`,
//!   `{{ labels.name }}`, `{{ .Labels.name }}`), `{{ value }}` (or
//!   `{{ $value }}`, `{{ .Value }}`) the instance's value, `{{ $labels }}`
//!   every label as Go prints a map (`map[host:a job:node]`);
//! - functions, called as `{{ humanize $value }}` or in a pipeline
//!   `{{ $value | humanize }}`: `humanize`, `humanize1024`,
//!   `humanizePercentage`, `humanizeDuration`, `humanizeTimestamp`,
//!   `printf "%.2f" $value`, `toUpper`, `toLower`, `title`;
//! - `{{-` and `-}}` trim the spaces before and after.
//!
//! A rule's annotations may only name what its instances have and only
//! these functions (`rules check` and loading refuse others, see
//! `config::compile`); in message templates unknown labels become empty.

use crate::matcher::Labels;

const FUNCTIONS: &[&str] = &[
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "humanizeTimestamp",
    "printf",
    "toUpper",
    "toLower",
    "title",
];

/// A template's parts: text as it is, and `{{ ... }}` actions.
#[derive(Debug, Clone, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Action(&'a str),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-').filter(|a| a.starts_with(char::is_whitespace)) {
            text = text.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-').filter(|a| a.ends_with(char::is_whitespace)) {
            trim_next = true;
            action = a;
        }
        out.push(Piece::Text(text));
        out.push(Piece::Action(action.trim()));
        rest = &after[end + 2..];
    }
    // An unclosed `{{` is text.
    out.push(Piece::Text(if trim_next { rest.trim_start() } else { rest }));
    out
}

/// One operand or function name of an action.
#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    Word(&'a str),
    Str(String),
    Num(f64),
    Pipe,
}

fn tokens(action: &str) -> Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = action.trim_start();
    while let Some(c) = rest.chars().next() {
        if c == '|' {
            out.push(Token::Pipe);
            rest = &rest[1..];
        } else if c == '"' || c == '`' {
            let (s, len) = string_literal(rest)?;
            out.push(Token::Str(s));
            rest = &rest[len..];
        } else {
            let end = rest.find(|c: char| c.is_whitespace() || c == '|').unwrap_or(rest.len());
            let word = &rest[..end];
            match word.parse::<f64>() {
                Ok(n) if word.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') => {
                    out.push(Token::Num(n))
                }
                _ => out.push(Token::Word(word)),
            }
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(out)
}

/// A Go string literal at the start of `s`: its value and length.
fn string_literal(s: &str) -> Result<(String, usize), String> {
    let quote = s.as_bytes()[0] as char;
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, i + 1)),
            '\\' if quote == '"' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('\\' | '"')) => out.push(c),
                other => return Err(format!("unknown escape \\{} in a string", other.unwrap_or(' '))),
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated string in {s:?}"))
}

/// What an operand names.
#[derive(Debug, Clone, PartialEq)]
enum Operand<'a> {
    Value,
    Label(&'a str),
    AllLabels,
    Literal(Val),
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Num(f64),
    Str(String),
}

fn operand<'a>(token: &Token<'a>) -> Result<Operand<'a>, String> {
    Ok(match token {
        Token::Str(s) => Operand::Literal(Val::Str(s.clone())),
        Token::Num(n) => Operand::Literal(Val::Num(*n)),
        Token::Pipe => return Err("a `|` without a command".into()),
        Token::Word("value" | "$value" | ".Value") => Operand::Value,
        Token::Word("$labels" | ".Labels") => Operand::AllLabels,
        Token::Word(w) => {
            let name = ["$labels.", "labels.", ".Labels."].iter().find_map(|p| w.strip_prefix(p)).unwrap_or(w);
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{w:?} is neither a label, `$value` nor a function ({})", FUNCTIONS.join(", ")));
            }
            Operand::Label(name)
        }
    })
}

/// A command: a function with its arguments, or one operand.
#[derive(Debug, Clone, PartialEq)]
enum Command<'a> {
    Operand(Operand<'a>),
    Call(&'a str, Vec<Operand<'a>>),
}

/// Parses an action into its pipeline of commands.
fn pipeline(action: &str) -> Result<Vec<Command<'_>>, String> {
    let tokens = tokens(action)?;
    if tokens.is_empty() {
        return Err("an empty {{ }}".into());
    }
    let mut out = Vec::new();
    for (i, part) in tokens.split(|t| *t == Token::Pipe).enumerate() {
        let Some((first, args)) = part.split_first() else {
            return Err("a `|` without a command".into());
        };
        let function = match first {
            // In the first command a lone word is a label (`{{ title }}`),
            // after a `|` a function (`{{ $value | humanize }}`).
            Token::Word(w) if FUNCTIONS.contains(w) && (i > 0 || !args.is_empty()) => Some(*w),
            Token::Word(w) if i > 0 => {
                return Err(format!("unknown function {w:?} (known: {})", FUNCTIONS.join(", ")));
            }
            Token::Word(w) if !args.is_empty() => {
                return Err(format!("unknown function {w:?} (known: {})", FUNCTIONS.join(", ")));
            }
            _ => None,
        };
        let args = args.iter().map(operand).collect::<Result<Vec<_>, _>>()?;
        out.push(match function {
            Some(f) => Command::Call(f, args),
            None => Command::Operand(operand(first)?),
        });
    }
    Ok(out)
}

/// The label names a template uses, or what is wrong with it (bad syntax,
/// an unknown function, a function given what it cannot take): each
/// action is tried once with a value of 1 and every label `x`.
pub fn labels_used(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    for piece in pieces(template) {
        let Piece::Action(action) = piece else { continue };
        let commands = pipeline(action).map_err(|e| format!("{{{{ {action} }}}}: {e}"))?;
        let trial = commands
            .iter()
            .flat_map(|c| match c {
                Command::Operand(o) => std::slice::from_ref(o),
                Command::Call(_, args) => args.as_slice(),
            })
            .filter_map(|o| match o {
                Operand::Label(l) => Some((l.to_string(), "x".to_string())),
                _ => None,
            })
            .collect();
        run(&commands, &trial, 1.0).map_err(|e| format!("{{{{ {action} }}}}: {e}"))?;
        for command in commands {
            let operands = match command {
                Command::Operand(o) => vec![o],
                Command::Call(_, args) => args,
            };
            out.extend(operands.into_iter().filter_map(|o| match o {
                Operand::Label(l) => Some(l),
                _ => None,
            }));
        }
    }
    Ok(out)
}

pub fn render(template: &str, labels: &Labels, value: f64) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Action(a) => match pipeline(a).and_then(|p| run(&p, labels, value)) {
                Ok(s) => out.push_str(&s),
                // Refused at load for rules; a message template keeps it.
                Err(_) => {
                    out.push_str("{{ ");
                    out.push_str(a);
                    out.push_str(" }}");
                }
            },
        }
    }
    out
}

fn run(pipeline: &[Command<'_>], labels: &Labels, value: f64) -> Result<String, String> {
    let resolve = |o: &Operand<'_>| -> Val {
        match o {
            Operand::Value => Val::Num(value),
            Operand::Label(l) => Val::Str(labels.get(*l).cloned().unwrap_or_default()),
            Operand::AllLabels => Val::Str(format!(
                "map[{}]",
                labels.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ")
            )),
            Operand::Literal(v) => v.clone(),
        }
    };
    let mut carried: Option<Val> = None;
    for command in pipeline {
        let result = match command {
            Command::Operand(o) => resolve(o),
            Command::Call(f, args) => {
                let mut args: Vec<Val> = args.iter().map(resolve).collect();
                args.extend(carried.take());
                call(f, &args)?
            }
        };
        carried = Some(result);
    }
    Ok(match carried {
        Some(Val::Num(n)) => format_value(n),
        Some(Val::Str(s)) => s,
        None => String::new(),
    })
}

fn number(v: &Val) -> Result<f64, String> {
    match v {
        Val::Num(n) => Ok(*n),
        Val::Str(s) => s.trim().parse().map_err(|_| format!("{s:?} is not a number")),
    }
}

fn text(v: &Val) -> String {
    match v {
        Val::Num(n) => format_value(*n),
        Val::Str(s) => s.clone(),
    }
}

fn call(f: &str, args: &[Val]) -> Result<Val, String> {
    if f == "printf" {
        let Some((Val::Str(format), rest)) = args.split_first() else {
            return Err("printf needs a format string first".into());
        };
        return printf(format, rest).map(Val::Str);
    }
    let [arg] = args else { return Err(format!("{f} takes one argument")) };
    Ok(Val::Str(match f {
        "humanize" => humanize(number(arg)?),
        "humanize1024" => humanize1024(number(arg)?),
        "humanizePercentage" => format!("{}%", go_g(number(arg)? * 100.0, 4)),
        "humanizeDuration" => humanize_duration(number(arg)?),
        "humanizeTimestamp" => humanize_timestamp(number(arg)?),
        "toUpper" => text(arg).to_uppercase(),
        "toLower" => text(arg).to_lowercase(),
        "title" => {
            let mut out = String::new();
            let mut start = true;
            for c in text(arg).chars() {
                if start {
                    out.extend(c.to_uppercase())
                } else {
                    out.push(c)
                }
                start = !c.is_alphanumeric();
            }
            out
        }
        other => return Err(format!("unknown function {other:?}")),
    }))
}

/// Go's `%.{prec}g`: `prec` significant digits, trailing zeros dropped,
/// an exponent below 1e-4 and from 1e{prec} on.
pub fn go_g(v: f64, prec: usize) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let prec = prec.max(1);
    let e = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s.to_string() }
    };
    if exp < -4 || exp >= prec as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        trim(&format!("{:.*}", (prec as i32 - 1 - exp).max(0) as usize, v))
    }
}

fn humanize(mut v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        (v, prefix) = scaled_up(v);
    }
    format!("{}{prefix}", go_g(v, 4))
}

/// `v` (below 1 in size) times 1000 until it is not, with the SI prefix
/// that says how often (`m`, `u`, `n`, ...), as Prometheus' humanize does.
fn scaled_up(mut v: f64) -> (f64, &'static str) {
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    (v, prefix)
}

fn humanize1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_g(v, 4))
}

fn humanize_duration(mut v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    if v == 0.0 {
        return "0s".into();
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        return if days != 0 {
            format!("{sign}{days}d {h}h {m}m {s}s")
        } else if h != 0 {
            format!("{sign}{h}h {m}m {s}s")
        } else if m != 0 {
            format!("{sign}{m}m {s}s")
        } else {
            format!("{sign}{}s", go_g(v, 4))
        };
    }
    let (v, prefix) = scaled_up(v);
    format!("{}{prefix}s", go_g(v, 4))
}

/// Unix seconds as Go prints a UTC time (`2026-12-06 10:00:00 +0000 UTC`).
fn humanize_timestamp(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    let nanos = (v * 1e9).round();
    if nanos.abs() >= i64::MAX as f64 {
        return go_g(v, 4);
    }
    let t = chrono::DateTime::from_timestamp_nanos(nanos as i64);
    let frac = t.format("%.9f").to_string();
    let frac = frac.trim_end_matches('0').trim_end_matches('.');
    format!("{}{frac} +0000 UTC", t.format("%Y-%m-%d %H:%M:%S"))
}

/// Widest field and most digits `printf` gives (Go refuses widths above
/// 1,000,000; an annotation needs far fewer).
const MAX_PRINTF_WIDTH: usize = 1000;

/// Go's `printf` for the verbs rule files use: `%s %v %d %f %e %g %q %%`
/// with flags, width and precision.
fn printf(format: &str, args: &[Val]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | ' ' | '#') {
                spec.push(c);
                chars.next();
            } else {
                break;
            }
        }
        let verb = chars.next().ok_or("printf: a format ends in %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = args.next().ok_or_else(|| format!("printf: %{spec}{verb} has no argument"))?;
        let left = spec.starts_with('-');
        let plus = spec.contains('+');
        let spec = spec.trim_start_matches(['-', '+', ' ', '#']);
        let (width, precision) = match spec.split_once('.') {
            Some((w, p)) => (w.parse::<usize>().ok(), Some(p.parse::<usize>().unwrap_or(0))),
            None => (spec.parse::<usize>().ok(), None),
        };
        if width.is_some_and(|w| w > MAX_PRINTF_WIDTH) || precision.is_some_and(|p| p > MAX_PRINTF_WIDTH) {
            return Err(format!("printf: width and precision are at most {MAX_PRINTF_WIDTH}"));
        }
        let mut s = match verb {
            's' | 'v' => text(arg),
            'q' => format!("{:?}", text(arg)),
            'd' => format!("{}", number(arg)?.trunc() as i64),
            'f' | 'F' => format!("{:.*}", precision.unwrap_or(6), number(arg)?),
            'e' => {
                let e = format!("{:.*e}", precision.unwrap_or(6), number(arg)?);
                match e.split_once('e') {
                    Some((m, x)) => {
                        let (sign, digits) = x.strip_prefix('-').map_or(("+", x), |d| ("-", d));
                        format!("{m}e{sign}{digits:0>2}")
                    }
                    None => e,
                }
            }
            'g' => match precision {
                Some(p) => go_g(number(arg)?, p),
                None => format_value(number(arg)?),
            },
            other => return Err(format!("printf: verb %{other} is not supported")),
        };
        if plus && matches!(verb, 'd' | 'f' | 'F' | 'e' | 'g') && !s.starts_with('-') {
            s.insert(0, '+');
        }
        if let Some(w) = width.filter(|w| *w > s.chars().count()) {
            let pad = " ".repeat(w - s.chars().count());
            s = if left { s + &pad } else { pad + &s };
        }
        out.push_str(&s);
    }
    if args.next().is_some() {
        return Err("printf: more arguments than verbs".into());
    }
    Ok(out)
}

/// Integers without decimals, others with up to four.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    if v.is_infinite() {
        return go_g(v, 4);
    }
    if v.abs() >= 1e15 {
        // As Go prints large floats: the shortest digits, `1e+300`.
        let e = format!("{v:e}");
        if let Some((mantissa, exp)) = e.split_once('e') {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            return format!("{mantissa}e{sign}{digits:0>2}");
        }
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
        assert_eq!(labels_used("{{ value }} on {{ $labels.host }}, {{ humanize $value }} {{ open"), Ok(vec!["host"]));
    }

    #[test]
    fn prometheus_functions_print_as_go_does() {
        let l: Labels =
            [("instance".to_string(), "a:9100".to_string()), ("job".to_string(), "node".to_string())].into();
        let r = |t: &str, v: f64| render(t, &l, v);
        assert_eq!(r("{{ $value | humanize }}", 1234567.0), "1.235M");
        assert_eq!(r("{{ humanize $value }}", 0.0012345), "1.234m");
        assert_eq!(r("{{ humanize $value }}", 0.0), "0");
        assert_eq!(r("{{ $value | humanize1024 }}", 2048.0), "2ki");
        assert_eq!(r("{{ $value | humanizePercentage }}", 0.12345), "12.35%");
        assert_eq!(r("{{ humanizeDuration $value }}", 93784.0), "1d 2h 3m 4s");
        assert_eq!(r("{{ humanizeDuration $value }}", 1.5), "1.5s");
        assert_eq!(r("{{ humanizeDuration $value }}", 0.0025), "2.5ms");
        assert_eq!(r("{{ humanizeTimestamp $value }}", 1_800_000_000.5), "2027-01-15 08:00:00.5 +0000 UTC");
        assert_eq!(r("{{ printf \"%.2f\" $value }}%", 97.456), "97.46%");
        assert_eq!(r("{{ $value | printf \"%.1f\" }}", 2.25), "2.2");
        assert_eq!(
            r("{{ printf \"%s is %5.1f|%-4d|%e\" $labels.job $value 7 $value }}", 3.0),
            "node is   3.0|7   |3.000000e+00"
        );
        assert_eq!(r("LABELS = {{ $labels }}", 0.0), "LABELS = map[instance:a:9100 job:node]");
        assert_eq!(r("{{ .Labels.job | toUpper }} {{ title \"disk full\" }}", 0.0), "NODE Disk Full");
        assert_eq!(r("a  {{- $labels.job -}}  b", 0.0), "anodeb");
        assert_eq!(go_g(1234.5678, 4), "1235");
        assert_eq!(go_g(123456.0, 4), "1.235e+05");
        assert_eq!(go_g(0.00001234, 4), "1.234e-05");
        assert_eq!(go_g(100.0, 4), "100");
    }

    #[test]
    fn hostile_templates_are_refused_when_loaded() {
        // Review: `%99999999999999d` aborted the server allocating the
        // padding; `%.70000f` panicked the alerting engine.
        for t in [
            "{{ printf \"%99999999999999d\" $value }}",
            "{{ printf \"%18446744073709551615d\" $value }}",
            "{{ printf \"%.70000f\" $value }}",
            "{{ printf \"%1001s\" $labels.a }}",
            "{{ printf \"%x\" $value }}",
            "{{ printf \"%d %d\" 1 }}",
            "{{ printf \"%d\" 1 2 }}",
            "{{ humanize $value $value }}",
            "{{ humanizeTimestamp \"abc\" }}",
        ] {
            assert!(labels_used(t).is_err(), "{t}");
            assert_eq!(render(t, &Labels::new(), 1.0), t, "kept as written where it cannot be rendered");
        }
        assert_eq!(labels_used("{{ printf \"%1000.3f|%s\" $value $labels.a }}"), Ok(vec!["a"]));
        assert_eq!(format_value(1e300), "1e+300");
        assert_eq!(format_value(-2.5e20), "-2.5e+20");
    }

    #[test]
    fn bad_templates_are_reported() {
        let err = labels_used("{{ humanise $value }}").expect_err("a typo in a function");
        assert!(err.contains("unknown function \"humanise\""), "{err}");
        assert!(labels_used("{{ $value | frobnicate }}").is_err());
        assert!(labels_used("{{ printf \"%d }}").is_err(), "unterminated string");
        assert!(labels_used("{{ }}").is_err());
        assert!(labels_used("{{ $labels.a-b }}").is_err());
        assert_eq!(labels_used("{{ $value | humanize }} {{ title }}"), Ok(vec!["title"]), "a lone word is a label");
    }
}
