//! A pickle reader that builds a value tree and never executes anything.
//!
//! LangChain's `FAISS.save_local` pickles `(InMemoryDocstore, {row: docstore_id})`. Python's
//! own unpickler would import and call whatever classes the file names; this reader instead
//! knows opcodes of protocols 2–5 and turns every class reference into inert data
//! ([`Value::Object`] with the class's module and name), allowing only the classes a caller
//! names. Anything else (another class, an opcode of protocol 0/1, a truncated file) is an
//! error naming what was found, never a crash.
//!
//! Containers are shared (`Rc<RefCell<…>>`) because pickle's memo refers to an object that is
//! filled *after* it was memoized: a metadata dict used by two documents is pickled once and
//! fetched by reference the second time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A class a pickle may name, `(module, name)`.
pub type ClassName = (String, String);

/// A decoded pickle value.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A non-negative integer beyond `i64` that still fits `u64` (JSON numbers can be).
    UInt(u64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// Sets are unordered in Python; their order here is the file's and means nothing.
    Set(Rc<RefCell<Vec<Value>>>),
    /// A reference to an allowed class.
    Class(Rc<ClassName>),
    /// An instance: its class, the constructor arguments and the state given by `BUILD`.
    Object(Rc<RefCell<Object>>),
}

#[derive(Debug)]
pub struct Object {
    pub class: ClassName,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

impl Value {
    /// The value of `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(items) => items
                .borrow()
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short description for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::UInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::Class(c) => format!("class {}.{}", c.0, c.1),
            Value::Object(o) => {
                let o = o.borrow();
                format!("{}.{} object", o.class.0, o.class.1)
            }
        }
    }
}

/// Why a pickle could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum PickleError {
    #[error("the pickle ends early (at byte {0})")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{opcode:02x} ({name}) at byte {at}; tvs reads protocols 2 to 5")]
    Opcode { opcode: u8, name: &'static str, at: usize },
    #[error("the pickle names class {0}.{1}, which tvs does not read (it never runs code from a pickle)")]
    Class(String, String),
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: String },
}

/// Classes whose construction is understood as data: sets built by `REDUCE`.
fn builtin_set(class: &ClassName) -> bool {
    matches!(class.0.as_str(), "builtins" | "__builtin__") && matches!(class.1.as_str(), "set" | "frozenset")
}

/// Reads a pickle, allowing references to `allowed` classes (and `set`/`frozenset`) only.
pub fn parse(bytes: &[u8], allowed: &[(&str, &str)]) -> Result<Value, PickleError> {
    Reader {
        bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        allowed,
    }
    .run()
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    allowed: &'a [(&'a str, &'a str)],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(PickleError::Truncated(self.bytes.len()))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| PickleError::Truncated(self.bytes.len()))
    }

    fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.pos,
            what: what.into(),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.malformed("pop below a mark"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("empty stack"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        self.stack.last().ok_or_else(|| self.malformed("empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no mark"))?;
        Ok(self.stack.split_off(mark))
    }

    fn string(&mut self, n: usize) -> Result<Value, PickleError> {
        let raw = self.take(n)?.to_vec();
        String::from_utf8(raw)
            .map(Value::Str)
            .map_err(|_| self.malformed("a string that is not UTF-8"))
    }

    fn class(&mut self, module: String, name: String) -> Result<Value, PickleError> {
        let class = (module, name);
        let allowed = builtin_set(&class) || self.allowed.iter().any(|(m, n)| class.0 == *m && class.1 == *n);
        if !allowed {
            return Err(PickleError::Class(class.0, class.1));
        }
        Ok(Value::Class(Rc::new(class)))
    }

    fn instantiate(&mut self, callable: Value, args: Vec<Value>) -> Result<Value, PickleError> {
        let Value::Class(class) = callable else {
            return Err(self.malformed(format!("a call of a {}", callable.kind())));
        };
        if builtin_set(&class) {
            let items = match args.into_iter().next() {
                None => Vec::new(),
                Some(Value::List(items)) | Some(Value::Set(items)) => items.borrow().clone(),
                Some(Value::Tuple(items)) => items.as_ref().clone(),
                Some(other) => return Err(self.malformed(format!("set({})", other.kind()))),
            };
            return Ok(Value::Set(Rc::new(RefCell::new(items))));
        }
        Ok(Value::Object(Rc::new(RefCell::new(Object {
            class: class.as_ref().clone(),
            args,
            state: None,
        }))))
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let opcode = self.u8()?;
            match opcode {
                0x80 => {
                    // PROTO
                    let version = self.u8()?;
                    if !(2..=5).contains(&version) {
                        return Err(self.malformed(format!("protocol {version}; tvs reads protocols 2 to 5")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement.
                    let n = if opcode == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.len_u32()?
                    };
                    let raw = self.take(n)?;
                    if n == 9 && raw[8] == 0 {
                        let mut buf = [0u8; 8];
                        buf.copy_from_slice(&raw[..8]);
                        self.stack.push(Value::UInt(u64::from_le_bytes(buf)));
                        continue;
                    }
                    if n > 8 {
                        return Err(self.malformed("an integer wider than 64 bits"));
                    }
                    let mut buf = if raw.last().is_some_and(|b| b & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(raw);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                    let n = match opcode {
                        b'C' => usize::from(self.u8()?),
                        b'B' => self.len_u32()?,
                        _ => self.len_u64()?,
                    };
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b']' => self.stack.push(Value::List(Rc::default())),
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                0x8f => self.stack.push(Value::Set(Rc::default())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err(self.malformed("a tuple longer than the stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Set(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let item = self.pop()?;
                    match self.top()? {
                        Value::List(list) => list.borrow_mut().push(item),
                        other => return Err(self.malformed(format!("APPEND to a {}", other.kind()))),
                    }
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(list) | Value::Set(list) => list.borrow_mut().extend(items),
                        other => return Err(self.malformed(format!("adding items to a {}", other.kind()))),
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    match self.top()? {
                        Value::Dict(dict) => dict.borrow_mut().push((key, value)),
                        other => return Err(self.malformed(format!("SETITEM on a {}", other.kind()))),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    match self.top()? {
                        Value::Dict(dict) => dict.borrow_mut().extend(pairs),
                        other => return Err(self.malformed(format!("SETITEMS on a {}", other.kind()))),
                    }
                }
                0x94 => {
                    let value = self.top()?.clone();
                    let index = self.memo.len() as u32;
                    self.memo.insert(index, value);
                }
                b'q' | b'r' => {
                    let index = self.memo_index(opcode == b'q')?;
                    let value = self.top()?.clone();
                    self.memo.insert(index, value);
                }
                b'h' | b'j' => {
                    let index = self.memo_index(opcode == b'h')?;
                    let value = self
                        .memo
                        .get(&index)
                        .cloned()
                        .ok_or_else(|| self.malformed(format!("memo {index} was never stored")))?;
                    self.stack.push(value);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let class = self.class(module, name)?;
                    self.stack.push(class);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed("STACK_GLOBAL of non-strings"));
                    };
                    let class = self.class(module, name)?;
                    self.stack.push(class);
                }
                0x81 | b'R' | 0x92 => {
                    // NEWOBJ (cls, args), REDUCE (callable, args) and NEWOBJ_EX (cls, args,
                    // kwargs) all become inert data; keyword arguments are not kept.
                    if opcode == 0x92 {
                        self.pop()?;
                    }
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Tuple(args) = args else {
                        return Err(self.malformed("arguments that are not a tuple"));
                    };
                    let value = self.instantiate(callable, args.as_ref().clone())?;
                    self.stack.push(value);
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Object(object) => object.borrow_mut().state = Some(state),
                        other => return Err(self.malformed(format!("BUILD of a {}", other.kind()))),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let value = self.top()?.clone();
                    self.stack.push(value);
                }
                other => {
                    return Err(PickleError::Opcode {
                        opcode: other,
                        name: opcode_name(other),
                        at,
                    });
                }
            }
        }
    }

    /// The memo index of BINPUT/BINGET (one byte) or LONG_BINPUT/LONG_BINGET (four).
    fn memo_index(&mut self, short: bool) -> Result<u32, PickleError> {
        Ok(if short {
            u32::from(self.u8()?)
        } else {
            u32::from_le_bytes(self.le()?)
        })
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.bytes.len()))?;
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| self.malformed("a GLOBAL name that is not UTF-8"))?
            .to_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("a dict with an odd number of items"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }
}

fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        b'T' | b'U' => "BINSTRING",
        b'p' => "PUT",
        b'g' => "GET",
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' | b'Q' => "PERSID",
        0x82..=0x84 => "EXT",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_containers_are_seen_filled_through_the_memo() {
        // x = {}; pickle.dumps([x, x], 4) after x["a"] = 1, hand-assembled: the dict is
        // memoized empty, filled, then fetched again by BINGET.
        let bytes = b"\x80\x04]\x94(}\x94\x8c\x01a\x94K\x01sh\x01e.";
        let value = parse(bytes, &[]).expect("parse");
        let Value::List(items) = value else { panic!("list") };
        let items = items.borrow();
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1].get("a"), Some(Value::Int(1))));
    }

    #[test]
    fn classes_not_allowed_and_old_opcodes_are_errors() {
        let os_system = b"\x80\x02cos\nsystem\n\x8c\x02id\x85R.";
        assert_eq!(
            parse(os_system, &[]).expect_err("os.system"),
            PickleError::Class("os".into(), "system".into())
        );
        assert!(matches!(
            parse(b"I1\n.", &[]),
            Err(PickleError::Opcode { name: "INT", .. })
        ));
        assert!(matches!(
            parse(b"\x80\x04\x8c\x05ab", &[]),
            Err(PickleError::Truncated(_))
        ));
        assert!(matches!(parse(b"\x80\x04.", &[]), Err(PickleError::Malformed { .. })));
        assert!(matches!(parse(b"", &[]), Err(PickleError::Truncated(0))));
    }

    #[test]
    fn integers_floats_and_sets_decode() {
        // (-2, 2**40, 1.5, {1}) with LONG1, BINFLOAT and EMPTY_SET + ADDITEMS.
        let bytes =
            b"\x80\x04(J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01G?\xf8\x00\x00\x00\x00\x00\x00\x8f(K\x01\x90t.";
        let Value::Tuple(items) = parse(bytes, &[]).expect("parse") else {
            panic!("tuple")
        };
        assert!(matches!(items[0], Value::Int(-2)));
        assert!(matches!(items[1], Value::Int(v) if v == 1 << 40));
        assert!(matches!(items[2], Value::Float(v) if v == 1.5));
        assert!(matches!(&items[3], Value::Set(s) if s.borrow().len() == 1));
    }
}
