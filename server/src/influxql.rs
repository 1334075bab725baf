//! InfluxQL, the part InfluxDB 1.x clients send (Telegraf's `CREATE
//! DATABASE`, the `influx` CLI, Grafana's InfluxQL mode): parsed here,
//! answered from the catalog (`SHOW ...`) or translated to SQL (`SELECT`)
//! by `influx_query.rs`. What is not parsed is refused naming it.

use std::fmt;

/// A parse error, as InfluxDB words it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParseError(pub(crate) String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error parsing query: {}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Statement {
    CreateDatabase(String),
    DropDatabase(String),
    ShowDatabases,
    ShowRetentionPolicies {
        db: Option<String>,
    },
    ShowMeasurements {
        db: Option<String>,
        filter: Option<NameMatch>,
        limit: Option<usize>,
        offset: usize,
    },
    ShowTagKeys {
        db: Option<String>,
        from: Option<Measurement>,
        limit: Option<usize>,
        offset: usize,
    },
    ShowFieldKeys {
        db: Option<String>,
        from: Option<Measurement>,
        limit: Option<usize>,
        offset: usize,
    },
    ShowTagValues {
        db: Option<String>,
        from: Option<Measurement>,
        keys: NameMatch,
        condition: Option<Cond>,
        limit: Option<usize>,
        offset: usize,
    },
    Select(Box<Select>),
}

/// Which names: `= name`, `IN (a, b)`, `=~ /re/`, `!~ /re/`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NameMatch {
    Eq(String),
    In(Vec<String>),
    Regex(String),
    NotRegex(String),
}

impl NameMatch {
    /// The test of a name, the regex compiled once (bounded in size).
    pub(crate) fn matcher(&self) -> Result<impl Fn(&str) -> bool + '_, String> {
        let re = match self {
            NameMatch::Regex(r) | NameMatch::NotRegex(r) => Some(compile(r)?),
            _ => None,
        };
        Ok(move |name: &str| match (self, &re) {
            (NameMatch::Eq(n), _) => n == name,
            (NameMatch::In(v), _) => v.iter().any(|n| n == name),
            (NameMatch::Regex(_), Some(re)) => re.is_match(name),
            (NameMatch::NotRegex(_), Some(re)) => !re.is_match(name),
            _ => false,
        })
    }
}

/// A regex of a statement, bounded as the SQL functions' are.
pub(crate) fn compile(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(re).size_limit(1 << 20).build().map_err(|e| format!("invalid regex /{re}/: {e}"))
}

/// `[db.[rp].]measurement`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measurement {
    pub(crate) db: Option<String>,
    pub(crate) name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Select {
    pub(crate) fields: Vec<Field>,
    pub(crate) from: Measurement,
    pub(crate) condition: Option<Cond>,
    /// `GROUP BY time(interval, offset)`, in nanoseconds.
    pub(crate) group_time: Option<(i64, i64)>,
    pub(crate) group_tags: GroupTags,
    pub(crate) fill: Fill,
    pub(crate) descending: bool,
    pub(crate) limit: Option<usize>,
    pub(crate) offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GroupTags {
    None,
    All,
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fill {
    Null,
    None,
    Previous,
    Value(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub(crate) expr: Expr,
    pub(crate) alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Wildcard,
    Ref(String),
    Number(f64),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    /// `time <op> <instant>`, the instant in nanoseconds.
    Time(CmpOp, i64),
    Compare(String, CmpOp, Literal),
    Regex(String, bool, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Str(String),
    Number(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A double-quoted identifier (never a keyword).
    Quoted(String),
    Str(String),
    Regex(String),
    Number(f64, String),
    /// A duration or an epoch with a unit, in nanoseconds.
    Duration(i64),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Quoted(s) => write!(f, "\"{s}\""),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Regex(s) => write!(f, "/{s}/"),
            Tok::Number(_, s) => write!(f, "{s}"),
            Tok::Duration(d) => write!(f, "{d}ns"),
            Tok::Op(o) => write!(f, "{o}"),
        }
    }
}

const UNITS: [(&str, i64); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("u", 1_000),
    ("µ", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];
const WEEK: i64 = 7 * 86_400_000_000_000;

fn lex(q: &str) -> Result<Vec<Tok>, ParseError> {
    let mut out = Vec::new();
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    // A `/` starts a regex where an operand is expected (after an
    // operator, `(`, `,`, or a keyword), and divides otherwise.
    let regex_allowed = |out: &Vec<Tok>| match out.last() {
        None => true,
        Some(Tok::Op(o)) => *o != ")",
        Some(Tok::Ident(k)) => ["from", "by", "with", "measurement", "key"].contains(&k.to_ascii_lowercase().as_str()),
        _ => false,
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError(format!(
                            "unterminated {} at char {}",
                            if c == '"' { "identifier" } else { "string" },
                            i
                        )));
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        s.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&d) if d == c => {
                        i += 1;
                        break;
                    }
                    Some(&d) => {
                        s.push(d);
                        i += 1;
                    }
                }
            }
            out.push(if c == '"' { Tok::Quoted(s) } else { Tok::Str(s) });
            continue;
        }
        if c == '/' && regex_allowed(&out) {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(ParseError("unterminated regex".into())),
                    Some('\\') if chars.get(i + 1) == Some(&'/') => {
                        s.push('/');
                        i += 2;
                    }
                    Some('/') => {
                        i += 1;
                        break;
                    }
                    Some(&d) => {
                        s.push(d);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Regex(s));
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len()
                && (chars[i] == 'e' || chars[i] == 'E')
                && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == '-' || *d == '+')
            {
                i += 2;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text: String = chars[start..i].iter().collect();
            // A unit right after the number: a duration.
            let unit_start = i;
            while i < chars.len() && (chars[i].is_alphabetic()) {
                i += 1;
            }
            let unit: String = chars[unit_start..i].iter().collect();
            if unit.is_empty() {
                let v: f64 = text.parse().map_err(|_| ParseError(format!("bad number {text}")))?;
                out.push(Tok::Number(v, text));
            } else {
                let n: i64 = text.parse().map_err(|_| ParseError(format!("bad duration {text}{unit}")))?;
                let per = if unit == "w" {
                    WEEK
                } else {
                    UNITS
                        .iter()
                        .find(|(u, _)| *u == unit)
                        .map(|(_, m)| *m)
                        .ok_or_else(|| ParseError(format!("invalid duration {text}{unit}")))?
                };
                out.push(Tok::Duration(
                    n.checked_mul(per).ok_or_else(|| ParseError(format!("duration {text}{unit} is out of range")))?,
                ));
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op = ["=~", "!~", "!=", "<>", "<=", ">=", "::"].into_iter().find(|o| *o == two);
        if let Some(o) = op {
            out.push(Tok::Op(o));
            i += 2;
            continue;
        }
        let one = ["=", "<", ">", "(", ")", ",", ";", ".", "*", "+", "-", "/"].into_iter().find(|o| o.starts_with(c));
        match one {
            Some(o) => {
                out.push(Tok::Op(o));
                i += 1;
            }
            None => return Err(ParseError(format!("found {c}, expected a statement at char {}", i + 1))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    now: i64,
    /// Parentheses and calls open at this point.
    depth: usize,
}

/// Most nested parentheses and calls: the parser recurses once per level,
/// and 3,000 levels overflowed a worker's stack and ended the process.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses `q` (statements separated by `;`); `now` is what `now()` means.
pub(crate) fn parse(q: &str, now: i64) -> Result<Vec<Statement>, ParseError> {
    let mut p = Parser { toks: lex(q)?, at: 0, now, depth: 0 };
    let mut out = Vec::new();
    loop {
        while p.eat_op(";") {}
        if p.peek().is_none() {
            break;
        }
        out.push(p.statement()?);
        if p.peek().is_some() && !p.eat_op(";") {
            return Err(p.expected("; or end of query"));
        }
    }
    if out.is_empty() {
        return Err(ParseError("found EOF, expected a statement".into()));
    }
    Ok(out)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expected(&self, what: &str) -> ParseError {
        let found = self.peek().map_or("EOF".to_string(), |t| t.to_string());
        ParseError(format!("found {found}, expected {what}"))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn kw(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat_kw(kw) { Ok(()) } else { Err(self.expected(&kw.to_ascii_uppercase())) }
    }

    fn eat_op(&mut self, op: &str) -> bool {
        let yes = matches!(self.peek(), Some(Tok::Op(o)) if *o == op);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn op(&mut self, op: &str) -> Result<(), ParseError> {
        if self.eat_op(op) { Ok(()) } else { Err(self.expected(op)) }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Ident(s)) | Some(Tok::Quoted(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => Err(self.expected("identifier")),
        }
    }

    fn integer(&mut self) -> Result<usize, ParseError> {
        match self.peek() {
            Some(Tok::Number(v, _)) if *v >= 0.0 && v.fract() == 0.0 => {
                let v = *v as usize;
                self.at += 1;
                Ok(v)
            }
            _ => Err(self.expected("integer")),
        }
    }

    fn on(&mut self) -> Result<Option<String>, ParseError> {
        if self.eat_kw("on") { Ok(Some(self.ident()?)) } else { Ok(None) }
    }

    fn statement(&mut self) -> Result<Statement, ParseError> {
        if self.eat_kw("create") {
            self.kw("database")?;
            let name = self.ident()?;
            // `WITH DURATION ... NAME ...`: retention is Tocsin's own.
            while self.peek().is_some() && !matches!(self.peek(), Some(Tok::Op(";"))) {
                self.at += 1;
            }
            return Ok(Statement::CreateDatabase(name));
        }
        if self.eat_kw("drop") {
            self.kw("database")?;
            return Ok(Statement::DropDatabase(self.ident()?));
        }
        if self.eat_kw("show") {
            return self.show();
        }
        if self.eat_kw("select") {
            return Ok(Statement::Select(Box::new(self.select()?)));
        }
        Err(self.expected("SELECT, SHOW, CREATE DATABASE"))
    }

    fn show(&mut self) -> Result<Statement, ParseError> {
        if self.eat_kw("databases") {
            return Ok(Statement::ShowDatabases);
        }
        if self.eat_kw("retention") {
            self.kw("policies")?;
            return Ok(Statement::ShowRetentionPolicies { db: self.on()? });
        }
        if self.eat_kw("measurements") {
            let db = self.on()?;
            let mut filter = None;
            if self.eat_kw("with") {
                self.kw("measurement")?;
                filter = Some(self.name_match()?);
            }
            let (limit, offset) = self.limit_offset()?;
            return Ok(Statement::ShowMeasurements { db, filter, limit, offset });
        }
        if self.eat_kw("tag") {
            if self.eat_kw("keys") {
                let db = self.on()?;
                let from = self.optional_from()?;
                let (limit, offset) = self.limit_offset()?;
                return Ok(Statement::ShowTagKeys { db, from, limit, offset });
            }
            self.kw("values")?;
            let db = self.on()?;
            let from = self.optional_from()?;
            self.kw("with")?;
            self.kw("key")?;
            let keys = self.name_match()?;
            let condition = if self.eat_kw("where") { Some(self.condition()?) } else { None };
            let (limit, offset) = self.limit_offset()?;
            return Ok(Statement::ShowTagValues { db, from, keys, condition, limit, offset });
        }
        if self.eat_kw("field") {
            self.kw("keys")?;
            let db = self.on()?;
            let from = self.optional_from()?;
            let (limit, offset) = self.limit_offset()?;
            return Ok(Statement::ShowFieldKeys { db, from, limit, offset });
        }
        Err(self.expected("DATABASES, MEASUREMENTS, TAG KEYS, TAG VALUES, FIELD KEYS, RETENTION POLICIES"))
    }

    fn name_match(&mut self) -> Result<NameMatch, ParseError> {
        if self.eat_op("=") {
            return Ok(NameMatch::Eq(self.ident()?));
        }
        if self.eat_op("!=") || self.eat_op("<>") {
            let n = self.ident()?;
            return Ok(NameMatch::NotRegex(format!("^{}$", regex::escape(&n))));
        }
        if self.eat_kw("in") {
            self.op("(")?;
            let mut v = vec![self.ident()?];
            while self.eat_op(",") {
                v.push(self.ident()?);
            }
            self.op(")")?;
            return Ok(NameMatch::In(v));
        }
        let negate = if self.eat_op("=~") {
            false
        } else if self.eat_op("!~") {
            true
        } else {
            return Err(self.expected("=, IN, =~ or !~"));
        };
        match self.next() {
            Some(Tok::Regex(r)) => Ok(if negate { NameMatch::NotRegex(r) } else { NameMatch::Regex(r) }),
            _ => {
                self.at -= 1;
                Err(self.expected("regex"))
            }
        }
    }

    fn optional_from(&mut self) -> Result<Option<Measurement>, ParseError> {
        if self.eat_kw("from") { Ok(Some(self.measurement()?)) } else { Ok(None) }
    }

    /// `m`, `rp.m`, `db.rp.m`, `db..m`.
    fn measurement(&mut self) -> Result<Measurement, ParseError> {
        if matches!(self.peek(), Some(Tok::Regex(_))) {
            return Err(ParseError("FROM /regex/ is not supported; name one measurement".into()));
        }
        let mut parts = vec![Some(self.ident()?)];
        while self.eat_op(".") {
            if matches!(self.peek(), Some(Tok::Op("."))) {
                parts.push(None);
                continue;
            }
            parts.push(Some(self.ident()?));
        }
        let name = parts.pop().flatten().ok_or_else(|| self.expected("measurement"))?;
        let db = match parts.len() {
            0 | 1 => None,
            2 => parts[0].clone(),
            _ => return Err(ParseError(format!("{} is not a measurement name", name))),
        };
        Ok(Measurement { db, name })
    }

    fn limit_offset(&mut self) -> Result<(Option<usize>, usize), ParseError> {
        let mut limit = None;
        let mut offset = 0;
        loop {
            if self.eat_kw("limit") {
                // `LIMIT 0` is no limit, as in InfluxDB.
                limit = Some(self.integer()?).filter(|n| *n > 0);
            } else if self.eat_kw("offset") {
                offset = self.integer()?;
            } else {
                return Ok((limit, offset));
            }
        }
    }

    fn select(&mut self) -> Result<Select, ParseError> {
        let mut fields = vec![self.field()?];
        while self.eat_op(",") {
            fields.push(self.field()?);
        }
        self.kw("from")?;
        let from = self.measurement()?;
        let condition = if self.eat_kw("where") { Some(self.condition()?) } else { None };
        let mut group_time = None;
        let mut group_tags = GroupTags::None;
        if self.eat_kw("group") {
            self.kw("by")?;
            loop {
                if self.eat_op("*") {
                    group_tags = GroupTags::All;
                } else if self.is_kw("time") && matches!(self.toks.get(self.at + 1), Some(Tok::Op("("))) {
                    self.at += 2;
                    let every = self.duration()?;
                    if every <= 0 {
                        return Err(ParseError("GROUP BY time() needs a positive interval".into()));
                    }
                    let offset = if self.eat_op(",") {
                        let negative = self.eat_op("-");
                        let d = self.duration()?;
                        if negative { -d } else { d }
                    } else {
                        0
                    };
                    self.op(")")?;
                    group_time = Some((every, offset.rem_euclid(every)));
                } else {
                    let tag = self.ident()?;
                    match &mut group_tags {
                        GroupTags::List(v) => v.push(tag),
                        GroupTags::None => group_tags = GroupTags::List(vec![tag]),
                        GroupTags::All => {}
                    }
                }
                if !self.eat_op(",") {
                    break;
                }
            }
        }
        let mut fill = Fill::Null;
        if self.is_kw("fill") && matches!(self.toks.get(self.at + 1), Some(Tok::Op("("))) {
            self.at += 2;
            fill = match self.next() {
                Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Fill::Null,
                Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("none") => Fill::None,
                Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("previous") => Fill::Previous,
                Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("linear") => {
                    return Err(ParseError("fill(linear) is not supported".into()));
                }
                Some(Tok::Number(v, _)) => Fill::Value(v),
                Some(Tok::Op("-")) => match self.next() {
                    Some(Tok::Number(v, _)) => Fill::Value(-v),
                    _ => return Err(ParseError("fill() takes null, none, previous or a number".into())),
                },
                _ => return Err(ParseError("fill() takes null, none, previous or a number".into())),
            };
            self.op(")")?;
        }
        let mut descending = false;
        if self.eat_kw("order") {
            self.kw("by")?;
            self.kw("time")?;
            if self.eat_kw("desc") {
                descending = true;
            } else {
                self.eat_kw("asc");
            }
        }
        let (limit, offset) = self.limit_offset()?;
        if self.is_kw("slimit") || self.is_kw("soffset") {
            return Err(ParseError("SLIMIT and SOFFSET are not supported".into()));
        }
        if self.eat_kw("tz") {
            return Err(ParseError("tz() is not supported: times are UTC".into()));
        }
        Ok(Select { fields, from, condition, group_time, group_tags, fill, descending, limit, offset })
    }

    fn duration(&mut self) -> Result<i64, ParseError> {
        match self.next() {
            Some(Tok::Duration(d)) => Ok(d),
            _ => {
                self.at -= 1;
                Err(self.expected("duration"))
            }
        }
    }

    fn field(&mut self) -> Result<Field, ParseError> {
        let expr = self.expr()?;
        if matches!(self.peek(), Some(Tok::Op("+" | "-" | "*" | "/"))) && expr != Expr::Wildcard {
            return Err(ParseError("arithmetic in SELECT is not supported; select the fields or aggregates".into()));
        }
        let alias = if self.eat_kw("as") { Some(self.ident()?) } else { None };
        Ok(Field { expr, alias })
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        if self.eat_op("*") {
            return Ok(Expr::Wildcard);
        }
        match self.next() {
            Some(Tok::Number(v, _)) => Ok(Expr::Number(v)),
            Some(Tok::Ident(f)) if matches!(self.peek(), Some(Tok::Op("("))) => {
                self.at += 1;
                self.deeper()?;
                let mut args = Vec::new();
                if !self.eat_op(")") {
                    args.push(self.expr()?);
                    while self.eat_op(",") {
                        args.push(self.expr()?);
                    }
                    self.op(")")?;
                }
                self.depth -= 1;
                Ok(Expr::Call(f.to_ascii_lowercase(), args))
            }
            Some(Tok::Ident(r)) | Some(Tok::Quoted(r)) => {
                // `"x"::field`, `"x"::tag`, `"x"::float`: the type is the table's.
                if self.eat_op("::") {
                    self.ident()?;
                }
                Ok(Expr::Ref(r))
            }
            _ => {
                self.at -= 1;
                Err(self.expected("field, function or *"))
            }
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError(format!("parentheses or calls nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn condition(&mut self) -> Result<Cond, ParseError> {
        let mut left = self.conjunction()?;
        while self.eat_kw("or") {
            left = Cond::Or(Box::new(left), Box::new(self.conjunction()?));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Cond, ParseError> {
        let mut left = self.primary()?;
        while self.eat_kw("and") {
            left = Cond::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn cmp_op(&mut self) -> Result<CmpOp, ParseError> {
        let op = match self.peek() {
            Some(Tok::Op("=")) => CmpOp::Eq,
            Some(Tok::Op("!=" | "<>")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            _ => return Err(self.expected("=, !=, <>, <, <=, >, >=, =~ or !~")),
        };
        self.at += 1;
        Ok(op)
    }

    fn primary(&mut self) -> Result<Cond, ParseError> {
        if self.eat_op("(") {
            self.deeper()?;
            let c = self.condition()?;
            self.op(")")?;
            self.depth -= 1;
            return Ok(c);
        }
        let name = self.ident()?;
        if self.eat_op("::") {
            self.ident()?;
        }
        if name.eq_ignore_ascii_case("time") {
            let op = self.cmp_op()?;
            return Ok(Cond::Time(op, self.instant()?));
        }
        for (op, negate) in [("=~", false), ("!~", true)] {
            if self.eat_op(op) {
                return match self.next() {
                    Some(Tok::Regex(r)) => Ok(Cond::Regex(name, negate, r)),
                    _ => {
                        self.at -= 1;
                        Err(self.expected("regex"))
                    }
                };
            }
        }
        let op = self.cmp_op()?;
        let negative = self.eat_op("-");
        let lit = match self.next() {
            Some(Tok::Str(s)) if !negative => Literal::Str(s),
            Some(Tok::Number(v, _)) => Literal::Number(if negative { -v } else { v }),
            Some(Tok::Ident(b)) if b.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Tok::Ident(b)) if b.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => {
                self.at -= 1;
                return Err(self.expected("string, number or boolean"));
            }
        };
        Ok(Cond::Compare(name, op, lit))
    }

    /// A time: `now()`, `'2023-11-14T22:13:20Z'`, `1700000000000ms`, a bare
    /// integer (nanoseconds), each optionally `+`/`-` durations.
    fn instant(&mut self) -> Result<i64, ParseError> {
        let negative = self.eat_op("-");
        let mut t = match self.next() {
            Some(Tok::Ident(f)) if f.eq_ignore_ascii_case("now") => {
                self.op("(")?;
                self.op(")")?;
                self.now
            }
            Some(Tok::Str(s)) => parse_time(&s).ok_or_else(|| ParseError(format!("invalid time '{s}'")))?,
            Some(Tok::Duration(d)) => d,
            Some(Tok::Number(v, text)) if v.fract() == 0.0 => {
                text.parse::<i64>().map_err(|_| ParseError(format!("time {text} is out of range")))?
            }
            _ => {
                self.at -= 1;
                return Err(self.expected("now(), a time string or an epoch"));
            }
        };
        if negative {
            t = t.saturating_neg();
        }
        loop {
            let sign = if self.eat_op("+") {
                1
            } else if self.eat_op("-") {
                -1
            } else {
                return Ok(t);
            };
            t = t.saturating_add(sign * self.duration()?);
        }
    }
}

/// RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]`, or a date, as UTC nanoseconds.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt();
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return t.and_utc().timestamp_nanos_opt();
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()
}

/// The time range `cond` bounds: the latest lower bound and the earliest
/// upper bound of its top-level `AND`ed time comparisons, inclusive.
pub(crate) fn time_range(cond: Option<&Cond>) -> (Option<i64>, Option<i64>) {
    let mut lo: Option<i64> = None;
    let mut hi: Option<i64> = None;
    fn walk(c: &Cond, lo: &mut Option<i64>, hi: &mut Option<i64>) {
        match c {
            Cond::And(a, b) => {
                walk(a, lo, hi);
                walk(b, lo, hi);
            }
            Cond::Time(op, t) => {
                let (l, h) = match op {
                    CmpOp::Gt => (Some(t.saturating_add(1)), None),
                    CmpOp::Ge => (Some(*t), None),
                    CmpOp::Lt => (None, Some(t.saturating_sub(1))),
                    CmpOp::Le => (None, Some(*t)),
                    CmpOp::Eq => (Some(*t), Some(*t)),
                    CmpOp::Ne => (None, None),
                };
                if let Some(l) = l {
                    *lo = Some(lo.map_or(l, |x| x.max(l)));
                }
                if let Some(h) = h {
                    *hi = Some(hi.map_or(h, |x| x.min(h)));
                }
            }
            _ => {}
        }
    }
    if let Some(c) = cond {
        walk(c, &mut lo, &mut hi);
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_003_600_000_000_000;

    fn one(q: &str) -> Statement {
        let mut v = parse(q, NOW).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn telegraf_and_the_cli_and_grafana_statements_parse() {
        assert_eq!(one("CREATE DATABASE \"telegraf\""), Statement::CreateDatabase("telegraf".into()));
        assert_eq!(one("create database db1 with duration 1d"), Statement::CreateDatabase("db1".into()));
        assert_eq!(one("SHOW DATABASES"), Statement::ShowDatabases);
        assert_eq!(
            one("SHOW MEASUREMENTS ON telegraf WITH MEASUREMENT =~ /cp.*/ LIMIT 10"),
            Statement::ShowMeasurements {
                db: Some("telegraf".into()),
                filter: Some(NameMatch::Regex("cp.*".into())),
                limit: Some(10),
                offset: 0
            }
        );
        assert_eq!(
            one("SHOW TAG VALUES FROM \"cpu\" WITH KEY = \"host\""),
            Statement::ShowTagValues {
                db: None,
                from: Some(Measurement { db: None, name: "cpu".into() }),
                keys: NameMatch::Eq("host".into()),
                condition: None,
                limit: None,
                offset: 0
            }
        );
        let Statement::Select(s) = one(
            "SELECT mean(\"usage_idle\") AS idle FROM \"telegraf\".\"autogen\".\"cpu\" WHERE (\"host\" =~ /^a$/) AND \
             time >= 1700000000000ms and time <= now() - 5m GROUP BY time(1m), \"host\" fill(0) ORDER BY time DESC LIMIT 5",
        ) else {
            panic!("not a select")
        };
        assert_eq!(s.from, Measurement { db: Some("telegraf".into()), name: "cpu".into() });
        assert_eq!(
            s.fields,
            vec![Field {
                expr: Expr::Call("mean".into(), vec![Expr::Ref("usage_idle".into())]),
                alias: Some("idle".into())
            }]
        );
        assert_eq!(s.group_time, Some((60_000_000_000, 0)));
        assert_eq!(s.group_tags, GroupTags::List(vec!["host".into()]));
        assert_eq!((s.fill, s.descending, s.limit), (Fill::Value(0.0), true, Some(5)));
        assert_eq!(time_range(s.condition.as_ref()), (Some(1_700_000_000_000_000_000), Some(NOW - 300_000_000_000)));
        let Statement::Select(s) =
            one("select * from cpu where time > '2023-11-14T22:13:20Z' and region = 'eu' or x != 1.5")
        else {
            panic!()
        };
        assert_eq!(s.fields[0].expr, Expr::Wildcard);
        assert_eq!(time_range(s.condition.as_ref()), (None, None), "an OR is no bound");
        assert_eq!(parse("SHOW DATABASES; SHOW MEASUREMENTS;", NOW).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn what_is_not_influxql_or_not_supported_is_named() {
        for (q, why) in [
            ("SELEC * FROM cpu", "found SELEC, expected SELECT, SHOW, CREATE DATABASE"),
            ("SELECT * FROM", "found EOF, expected identifier"),
            ("SELECT mean(v) * 2 FROM cpu", "arithmetic in SELECT is not supported"),
            ("SELECT v FROM cpu GROUP BY time(1m) fill(linear)", "fill(linear) is not supported"),
            ("SELECT v FROM cpu WHERE time > 'yesterday'", "invalid time 'yesterday'"),
            ("SELECT v FROM cpu WHERE host = 'a", "unterminated string"),
            ("SELECT v FROM /c.*/", "FROM /regex/ is not supported"),
            ("SELECT v FROM cpu GROUP BY time(1x)", "invalid duration 1x"),
            (
                format!("SELECT v FROM cpu WHERE {}a = 'b'{}", "(".repeat(65), ")".repeat(65)).as_str(),
                "nested deeper than 64",
            ),
            (format!("SELECT {}v{} FROM cpu", "f(".repeat(65), ")".repeat(65)).as_str(), "nested deeper than 64"),
            ("", "found EOF, expected a statement"),
        ] {
            let err = parse(q, NOW).expect_err(q).to_string();
            assert!(err.starts_with("error parsing query: ") && err.contains(why), "{q}: {err}");
        }
    }
}
