//! Plain-data pickles, written and read without a Python runtime and without ever
//! running anything.
//!
//! [`fn@write`] emits protocol 5 opcodes for a [`PlainValue`]; Python's `pickle.loads` (and
//! `cloudpickle.loads`) read it back to the equal `dict`/`list`/`str`/`int`/...
//!
//! [`read`] is a pickle *reader*, not an unpickler: it understands only the opcodes that
//! build builtin plain data (protocols 2 to 5) and refuses every opcode that could build
//! an object (`BUILD`, `NEWOBJ`, `INST`, `OBJ`, `EXT*`, persistent ids, out-of-band
//! buffers) with [`PickleError::NotPlainData`]. `GLOBAL`/`STACK_GLOBAL` + `REDUCE` are read
//! only for the few builtin data constructors that protocols 2 and 3 need because they
//! have no opcode of their own (`set`, `frozenset`, `bytearray`, `bytes`, and
//! `_codecs.encode` for protocol 2 bytes): the reader recognises these names from a fixed
//! table and builds the data itself; no name is ever looked up, imported or called, and
//! any other name is refused.
//! Shared references (`MEMOIZE`/`GET`) are honoured, and the output is bounded in size
//! and depth so a small hostile pickle cannot expand without limit.

use super::plain::{PlainValue, decimal_to_le_twos_complement, le_twos_complement_to_decimal};

/// The pickle opcodes this reader knows, by their names in Python's `pickletools`.
mod op {
    pub const ADDITEMS: u8 = 0x90;
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const BINFLOAT: u8 = b'G';
    pub const BINGET: u8 = b'h';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BINPERSID: u8 = b'Q';
    pub const BINPUT: u8 = b'q';
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BUILD: u8 = b'b';
    pub const BYTEARRAY8: u8 = 0x96;
    pub const DICT: u8 = b'd';
    pub const DUP: u8 = b'2';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_SET: u8 = 0x8f;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const FRAME: u8 = 0x95;
    pub const FROZENSET: u8 = 0x91;
    pub const GLOBAL: u8 = b'c';
    pub const INST: u8 = b'i';
    pub const LIST: u8 = b'l';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const LONG_BINGET: u8 = b'j';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MARK: u8 = b'(';
    pub const MEMOIZE: u8 = 0x94;
    pub const NEWFALSE: u8 = 0x89;
    pub const NEWOBJ: u8 = 0x81;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const NONE: u8 = b'N';
    pub const OBJ: u8 = b'o';
    pub const PERSID: u8 = b'P';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const PROTO: u8 = 0x80;
    pub const READONLY_BUFFER: u8 = 0x98;
    pub const REDUCE: u8 = b'R';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const STOP: u8 = b'.';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
}

/// Deepest nesting produced by [`read`].
pub const MAX_DEPTH: usize = 128;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickleError {
    /// The pickle is well formed but refers to something that is not plain data.
    NotPlainData(String),
    /// The bytes are not a well-formed pickle (truncated, bad stack, bad opcode).
    Malformed(String),
    /// The value would take more than the budget's bytes in memory: a pickle that
    /// shares one object many times (memo references) expands far past its own size.
    TooLarge { limit: usize },
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleError::NotPlainData(m) => write!(f, "the pickle is not plain data: {m}"),
            PickleError::Malformed(m) => write!(f, "malformed pickle: {m}"),
            PickleError::TooLarge { limit } => write!(f, "the pickle's value would take more than {limit} bytes"),
        }
    }
}

/// Writes `v` as a protocol 5 pickle.
pub fn write(v: &PlainValue) -> Result<Vec<u8>, String> {
    let mut out = vec![op::PROTO, 5];
    write_value(v, &mut out, 0)?;
    out.push(op::STOP);
    Ok(out)
}

fn write_value(v: &PlainValue, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("value nested deeper than 128 levels".into());
    }
    match v {
        PlainValue::None => out.push(op::NONE),
        PlainValue::Bool(true) => out.push(op::NEWTRUE),
        PlainValue::Bool(false) => out.push(op::NEWFALSE),
        PlainValue::Int(n) => write_int(*n, out),
        PlainValue::BigInt(s) => {
            let bytes = decimal_to_le_twos_complement(s).ok_or_else(|| format!("`{s}` is not an integer"))?;
            write_long(&bytes, out);
        }
        PlainValue::Float(f) => {
            out.push(op::BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        PlainValue::Str(s) => {
            let b = s.as_bytes();
            if b.len() < 256 {
                out.push(op::SHORT_BINUNICODE);
                out.push(b.len() as u8);
            } else {
                out.push(op::BINUNICODE);
                out.extend_from_slice(&u32::try_from(b.len()).map_err(|_| "string too long")?.to_le_bytes());
            }
            out.extend_from_slice(b);
        }
        PlainValue::Bytes(b) => {
            if b.len() < 256 {
                out.push(op::SHORT_BINBYTES);
                out.push(b.len() as u8);
            } else {
                out.push(op::BINBYTES);
                out.extend_from_slice(&u32::try_from(b.len()).map_err(|_| "bytes too long")?.to_le_bytes());
            }
            out.extend_from_slice(b);
        }
        PlainValue::List(items) => {
            out.push(op::EMPTY_LIST);
            write_batched(items, b'e', out, depth)?;
        }
        PlainValue::Tuple(items) => {
            if items.is_empty() {
                out.push(op::EMPTY_TUPLE);
            } else {
                out.push(op::MARK);
                for item in items {
                    write_value(item, out, depth + 1)?;
                }
                out.push(op::TUPLE);
            }
        }
        PlainValue::Dict(items) => {
            out.push(op::EMPTY_DICT);
            for chunk in items.chunks(1000) {
                out.push(op::MARK);
                for (k, v) in chunk {
                    write_value(k, out, depth + 1)?;
                    write_value(v, out, depth + 1)?;
                }
                out.push(op::SETITEMS);
            }
        }
        PlainValue::Set(items) => {
            out.push(op::EMPTY_SET);
            write_batched(items, 0x90, out, depth)?;
        }
        PlainValue::FrozenSet(items) => {
            out.push(op::MARK);
            for item in items {
                write_value(item, out, depth + 1)?;
            }
            out.push(op::FROZENSET);
        }
    }
    Ok(())
}

/// `MARK items... OP` in batches of 1000, as Python's pickler does.
fn write_batched(items: &[PlainValue], op: u8, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    for chunk in items.chunks(1000) {
        out.push(op::MARK);
        for item in chunk {
            write_value(item, out, depth + 1)?;
        }
        out.push(op);
    }
    Ok(())
}

fn write_int(n: i64, out: &mut Vec<u8>) {
    if (0..=0xff).contains(&n) {
        out.push(op::BININT1);
        out.push(n as u8);
    } else if (0..=0xffff).contains(&n) {
        out.push(op::BININT2);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else if i32::try_from(n).is_ok() {
        out.push(op::BININT);
        out.extend_from_slice(&(n as i32).to_le_bytes());
    } else if let Some(bytes) = decimal_to_le_twos_complement(&n.to_string()) {
        write_long(&bytes, out);
    }
}

fn write_long(bytes: &[u8], out: &mut Vec<u8>) {
    if bytes.len() < 256 {
        out.push(op::LONG1);
        out.push(bytes.len() as u8);
    } else {
        out.push(op::LONG4);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(bytes);
}

/// What the reader's stack and memo point at: containers are mutated in place, so a
/// memoized list that is filled after `MEMOIZE` is seen filled by every later `GET`.
enum Node {
    Leaf(PlainValue),
    /// A builtin data constructor named by `GLOBAL`, waiting for its `REDUCE`.
    Constructor(Constructor),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    FrozenSet(Vec<usize>),
}

/// The only globals the reader accepts: data constructors of builtin types.
#[derive(Debug, Clone, Copy)]
enum Constructor {
    Set,
    FrozenSet,
    Bytes,
    ByteArray,
    CodecsEncode,
}

impl Constructor {
    fn lookup(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("builtins" | "__builtin__", "set") => Constructor::Set,
            ("builtins" | "__builtin__", "frozenset") => Constructor::FrozenSet,
            ("builtins" | "__builtin__", "bytes") => Constructor::Bytes,
            ("builtins" | "__builtin__", "bytearray") => Constructor::ByteArray,
            ("_codecs", "encode") => Constructor::CodecsEncode,
            _ => return None,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, usize>,
}

/// Reads a plain-data pickle into a value of at most `max_bytes` bytes of memory (each
/// node counts its `PlainValue` and the bytes of its string, bytes or big integer), so
/// work and memory are bounded by the value produced, whatever the pickle's own size: an
/// object shared 2^40 times through the memo fails after `max_bytes`, with
/// [`PickleError::TooLarge`], instead of growing without bound.
pub fn read(data: &[u8], max_bytes: usize) -> Result<PlainValue, PickleError> {
    let mut r =
        Reader { data, pos: 0, nodes: Vec::new(), stack: Vec::new(), marks: Vec::new(), memo: Default::default() };
    let root = r.run()?;
    let mut budget = Budget { left: max_bytes, limit: max_bytes };
    let mut visiting = vec![false; r.nodes.len()];
    r.materialize(root, 0, &mut budget, &mut visiting)
}

/// Bytes of memory a value being built may still take.
struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    fn spend(&mut self, bytes: usize) -> Result<(), PickleError> {
        self.left = self.left.checked_sub(bytes).ok_or(PickleError::TooLarge { limit: self.limit })?;
        Ok(())
    }
}

fn malformed(m: impl Into<String>) -> PickleError {
    PickleError::Malformed(m.into())
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| malformed("truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).ok().filter(|&n| n <= self.data.len()).ok_or_else(|| malformed("length beyond the data"))
    }
    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }
    fn pop(&mut self) -> Result<usize, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(malformed("pop across a mark"));
        }
        self.stack.pop().ok_or_else(|| malformed("stack underflow"))
    }
    fn top(&self) -> Result<usize, PickleError> {
        self.stack.last().copied().ok_or_else(|| malformed("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| malformed("no mark"))?;
        if m > self.stack.len() {
            return Err(malformed("mark beyond the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| malformed("string is not UTF-8"))?.to_owned();
        self.push(Node::Leaf(PlainValue::Str(s)));
        Ok(())
    }
    fn bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?.to_vec();
        self.push(Node::Leaf(PlainValue::Bytes(b)));
        Ok(())
    }
    fn long(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        let v = if b.len() <= 8 {
            let mut a = if b.last().is_some_and(|x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
            a[..b.len()].copy_from_slice(b);
            PlainValue::Int(i64::from_le_bytes(a))
        } else {
            // A long written with more bytes than it needs is still one Python int: keep
            // values that fit 64 bits as `Int`, so equal ints are equal values.
            let decimal = le_twos_complement_to_decimal(b);
            match decimal.parse::<i64>() {
                Ok(i) => PlainValue::Int(i),
                Err(_) => PlainValue::BigInt(decimal),
            }
        };
        self.push(Node::Leaf(v));
        Ok(())
    }
    fn append_to(&mut self, target: usize, items: Vec<usize>) -> Result<(), PickleError> {
        match &mut self.nodes[target] {
            Node::List(v) | Node::Set(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(malformed("append to something that is not a list or set")),
        }
    }
    fn set_items(&mut self, target: usize, items: Vec<usize>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(malformed("odd number of dict items"));
        }
        match &mut self.nodes[target] {
            Node::Dict(d) => {
                d.extend(items.chunks(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => Err(malformed("setitem on something that is not a dict")),
        }
    }
    fn memo_put(&mut self, idx: u64) -> Result<(), PickleError> {
        let top = self.top()?;
        self.memo.insert(idx, top);
        Ok(())
    }
    fn memo_get(&mut self, idx: u64) -> Result<(), PickleError> {
        let node = *self.memo.get(&idx).ok_or_else(|| malformed("memo key not found"))?;
        self.stack.push(node);
        Ok(())
    }

    /// Reads opcodes until STOP and returns the root node. Each group of opcodes has its
    /// own step below; anything else is refused (objects, extensions, buffers) or not
    /// read (protocol 0 and 1 text opcodes).
    fn run(&mut self) -> Result<usize, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                op::STOP => return self.stack.pop().ok_or_else(|| malformed("empty stack at STOP")),
                op::PROTO | op::FRAME => self.framing(op)?,
                op::NONE
                | op::NEWTRUE
                | op::NEWFALSE
                | op::BININT1
                | op::BININT2
                | op::BININT
                | op::LONG1
                | op::LONG4
                | op::BINFLOAT => self.scalar(op)?,
                op::SHORT_BINUNICODE
                | op::BINUNICODE
                | op::BINUNICODE8
                | op::SHORT_BINBYTES
                | op::BINBYTES
                | op::BINBYTES8
                | op::BYTEARRAY8 => self.text(op)?,
                op::EMPTY_LIST
                | op::EMPTY_DICT
                | op::EMPTY_TUPLE
                | op::EMPTY_SET
                | op::MARK
                | op::APPEND
                | op::APPENDS
                | op::ADDITEMS
                | op::SETITEM
                | op::SETITEMS
                | op::TUPLE
                | op::TUPLE1
                | op::TUPLE2
                | op::TUPLE3
                | op::LIST
                | op::DICT
                | op::FROZENSET => self.container(op)?,
                op::MEMOIZE
                | op::BINPUT
                | op::LONG_BINPUT
                | op::BINGET
                | op::LONG_BINGET
                | op::POP
                | op::POP_MARK
                | op::DUP => self.stack_and_memo(op)?,
                op::GLOBAL | op::STACK_GLOBAL | op::REDUCE => self.call(op)?,
                other => return Err(self.refused(other)),
            }
        }
    }

    /// PROTO (protocols 2 to 5) and FRAME (a length hint only).
    fn framing(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            op::PROTO => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(malformed(format!("unsupported pickle protocol {proto}")));
                }
            }
            op::FRAME => {
                self.u64()?;
            }
            other => return Err(self.refused(other)),
        }
        Ok(())
    }

    /// None, booleans, ints of every width, floats.
    fn scalar(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            op::NONE => self.push(Node::Leaf(PlainValue::None)),
            op::NEWTRUE => self.push(Node::Leaf(PlainValue::Bool(true))),
            op::NEWFALSE => self.push(Node::Leaf(PlainValue::Bool(false))),
            op::BININT1 => {
                let v = self.u8()?;
                self.push(Node::Leaf(PlainValue::Int(v as i64)));
            }
            op::BININT2 => {
                let v = self.u16()?;
                self.push(Node::Leaf(PlainValue::Int(v as i64)));
            }
            op::BININT => {
                let v = self.u32()? as i32;
                self.push(Node::Leaf(PlainValue::Int(v as i64)));
            }
            op::LONG1 => {
                let n = self.u8()? as usize;
                self.long(n)?;
            }
            op::LONG4 => {
                let n = self.u32()? as u64;
                let n = self.len(n)?;
                self.long(n)?;
            }
            op::BINFLOAT => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.push(Node::Leaf(PlainValue::Float(f64::from_be_bytes(a))));
            }
            other => return Err(self.refused(other)),
        }
        Ok(())
    }

    /// Strings and bytes (a bytearray reads as bytes), with 1-, 4- and 8-byte lengths.
    fn text(&mut self, op: u8) -> Result<(), PickleError> {
        let n = match op {
            op::SHORT_BINUNICODE | op::SHORT_BINBYTES => self.u8()? as usize,
            op::BINUNICODE | op::BINBYTES => {
                let n = self.u32()? as u64;
                self.len(n)?
            }
            op::BINUNICODE8 | op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = self.u64()?;
                self.len(n)?
            }
            other => return Err(self.refused(other)),
        };
        match op {
            op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => self.string(n),
            _ => self.bytes(n),
        }
    }

    /// Lists, dicts, tuples, sets and frozensets: made empty or from the items above a
    /// MARK, and filled in place.
    fn container(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            op::EMPTY_LIST => self.push(Node::List(Vec::new())),
            op::EMPTY_DICT => self.push(Node::Dict(Vec::new())),
            op::EMPTY_TUPLE => self.push(Node::Tuple(Vec::new())),
            op::EMPTY_SET => self.push(Node::Set(Vec::new())),
            op::MARK => self.marks.push(self.stack.len()),
            op::APPEND => {
                let item = self.pop()?;
                let target = self.top()?;
                self.append_to(target, vec![item])?;
            }
            op::APPENDS | op::ADDITEMS => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append_to(target, items)?;
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![k, v])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.set_items(target, items)?;
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items));
            }
            op::TUPLE1 => {
                let a = self.pop()?;
                self.push(Node::Tuple(vec![a]));
            }
            op::TUPLE2 => {
                let b = self.pop()?;
                let a = self.pop()?;
                self.push(Node::Tuple(vec![a, b]));
            }
            op::TUPLE3 => {
                let c = self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                self.push(Node::Tuple(vec![a, b, c]));
            }
            op::LIST => {
                let items = self.pop_mark()?;
                self.push(Node::List(items));
            }
            op::DICT => {
                let items = self.pop_mark()?;
                self.push(Node::Dict(Vec::new()));
                let target = self.top()?;
                self.set_items(target, items)?;
            }
            op::FROZENSET => {
                let items = self.pop_mark()?;
                self.push(Node::FrozenSet(items));
            }
            other => return Err(self.refused(other)),
        }
        Ok(())
    }

    /// The memo (shared references) and plain stack moves.
    fn stack_and_memo(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            op::MEMOIZE => {
                let idx = self.memo.len() as u64;
                self.memo_put(idx)
            }
            op::BINPUT => {
                let idx = self.u8()? as u64;
                self.memo_put(idx)
            }
            op::LONG_BINPUT => {
                let idx = self.u32()? as u64;
                self.memo_put(idx)
            }
            op::BINGET => {
                let idx = self.u8()? as u64;
                self.memo_get(idx)
            }
            op::LONG_BINGET => {
                let idx = self.u32()? as u64;
                self.memo_get(idx)
            }
            op::POP => self.pop().map(drop),
            op::POP_MARK => self.pop_mark().map(drop),
            op::DUP => {
                let top = self.top()?;
                self.stack.push(top);
                Ok(())
            }
            other => Err(self.refused(other)),
        }
    }

    /// GLOBAL, STACK_GLOBAL and REDUCE: only the few builtins of [`Constructor`] are looked
    /// up, and only the calls that rebuild plain data are made; nothing is imported.
    fn call(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(&module, &name)
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (module, name) = (self.str_of(module)?, self.str_of(name)?);
                self.global(&module, &name)
            }
            op::REDUCE => {
                let args = self.pop()?;
                let func = self.pop()?;
                let value = self.reduce(func, args)?;
                self.push(value);
                Ok(())
            }
            other => Err(self.refused(other)),
        }
    }

    /// Why `op` (just read) is not read: an object the reader never builds, or an
    /// opcode outside protocols 2 to 5's plain data.
    fn refused(&self, op: u8) -> PickleError {
        match op {
            op::BUILD => PickleError::NotPlainData("it sets object state (BUILD)".into()),
            op::NEWOBJ | op::NEWOBJ_EX => PickleError::NotPlainData("it builds an object of a class (NEWOBJ)".into()),
            op::INST | op::OBJ => PickleError::NotPlainData("it builds an instance of a class (INST/OBJ)".into()),
            op::EXT1 | op::EXT2 | op::EXT4 => {
                PickleError::NotPlainData("it refers to a registered extension (EXT)".into())
            }
            op::PERSID | op::BINPERSID => PickleError::NotPlainData("it holds a persistent id".into()),
            op::NEXT_BUFFER | op::READONLY_BUFFER => PickleError::NotPlainData("it uses out-of-band buffers".into()),
            other => malformed(format!(
                "opcode 0x{other:02x} at byte {} is not read (only protocol 2-5 plain-data opcodes are)",
                self.pos - 1
            )),
        }
    }

    /// A `\n`-terminated line (GLOBAL's operands).
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| malformed("unterminated GLOBAL operand"))?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(line)
    }

    fn str_of(&self, id: usize) -> Result<String, PickleError> {
        match &self.nodes[id] {
            Node::Leaf(PlainValue::Str(s)) => Ok(s.clone()),
            _ => Err(malformed("STACK_GLOBAL operands are not strings")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        match Constructor::lookup(module, name) {
            Some(c) => {
                self.push(Node::Constructor(c));
                Ok(())
            }
            None => Err(PickleError::NotPlainData(format!("it refers to `{module}.{name}`"))),
        }
    }

    /// Builds the data a whitelisted constructor would, from its argument tuple.
    fn reduce(&self, func: usize, args: usize) -> Result<Node, PickleError> {
        let Node::Constructor(c) = &self.nodes[func] else {
            return Err(PickleError::NotPlainData(
                "it calls something that is not a builtin data type (REDUCE)".into(),
            ));
        };
        let Node::Tuple(args) = &self.nodes[args] else {
            return Err(malformed("REDUCE arguments are not a tuple"));
        };
        let items_of = |id: usize| match &self.nodes[id] {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => Ok(v.clone()),
            _ => Err(PickleError::NotPlainData("a set built from something that is not a list".into())),
        };
        let latin1 = |id: usize| match &self.nodes[id] {
            Node::Leaf(PlainValue::Str(s)) => s
                .chars()
                .map(|ch| u8::try_from(ch as u32).map_err(|_| malformed("latin-1 text beyond U+00FF")))
                .collect::<Result<Vec<u8>, _>>(),
            _ => Err(malformed("bytes built from something that is not text")),
        };
        let encoding_is_latin1 =
            |id: usize| matches!(&self.nodes[id], Node::Leaf(PlainValue::Str(e)) if e == "latin1" || e == "latin-1");
        Ok(match (c, args.as_slice()) {
            (Constructor::Set, []) => Node::Set(Vec::new()),
            (Constructor::Set, [items]) => Node::Set(items_of(*items)?),
            (Constructor::FrozenSet, []) => Node::FrozenSet(Vec::new()),
            (Constructor::FrozenSet, [items]) => Node::FrozenSet(items_of(*items)?),
            (Constructor::Bytes | Constructor::ByteArray, []) => Node::Leaf(PlainValue::Bytes(Vec::new())),
            (Constructor::ByteArray, [b]) => match &self.nodes[*b] {
                Node::Leaf(PlainValue::Bytes(b)) => Node::Leaf(PlainValue::Bytes(b.clone())),
                _ => return Err(PickleError::NotPlainData("bytearray of something that is not bytes".into())),
            },
            (Constructor::Bytes | Constructor::ByteArray | Constructor::CodecsEncode, [text, enc])
                if encoding_is_latin1(*enc) =>
            {
                Node::Leaf(PlainValue::Bytes(latin1(*text)?))
            }
            _ => {
                return Err(PickleError::NotPlainData(
                    "a builtin constructor with arguments it is not read with".into(),
                ));
            }
        })
    }

    fn materialize(
        &self,
        id: usize,
        depth: usize,
        budget: &mut Budget,
        visiting: &mut Vec<bool>,
    ) -> Result<PlainValue, PickleError> {
        if depth > MAX_DEPTH {
            return Err(PickleError::NotPlainData("nested deeper than 128 levels".into()));
        }
        budget.spend(std::mem::size_of::<PlainValue>())?;
        if visiting[id] {
            return Err(PickleError::NotPlainData("it contains itself (a recursive structure)".into()));
        }
        visiting[id] = true;
        let all = |ids: &[usize], budget: &mut Budget, visiting: &mut Vec<bool>| {
            ids.iter().map(|&c| self.materialize(c, depth + 1, budget, visiting)).collect::<Result<Vec<_>, _>>()
        };
        let v = match &self.nodes[id] {
            Node::Constructor(_) => {
                return Err(PickleError::NotPlainData("a builtin type object itself, not data made with it".into()));
            }
            Node::Leaf(v) => {
                match v {
                    PlainValue::Str(s) | PlainValue::BigInt(s) => budget.spend(s.len())?,
                    PlainValue::Bytes(b) => budget.spend(b.len())?,
                    _ => {}
                }
                v.clone()
            }
            Node::List(ids) => PlainValue::List(all(ids, budget, visiting)?),
            Node::Tuple(ids) => PlainValue::Tuple(all(ids, budget, visiting)?),
            Node::Set(ids) => PlainValue::Set(all(ids, budget, visiting)?),
            Node::FrozenSet(ids) => PlainValue::FrozenSet(all(ids, budget, visiting)?),
            Node::Dict(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for &(k, v) in pairs {
                    let k = self.materialize(k, depth + 1, budget, visiting)?;
                    let v = self.materialize(v, depth + 1, budget, visiting)?;
                    out.push((k, v));
                }
                PlainValue::Dict(out)
            }
        };
        visiting[id] = false;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// A budget no small test value comes near.
    const SMALL: usize = 1 << 20;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s.replace('\n', "")).unwrap()
    }

    /// `a = []; for _ in range(40): a = [a, a]`, pickled (254 bytes): 2^40 lists through
    /// the memo. Building it stops at the budget instead of growing past memory.
    #[test]
    fn expansion_bombs_stop_at_the_budget() {
        let bomb = b64(
            "gASV8wAAAAAAAABdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlGgoZWgnZWgmZWglZWgkZWgjZWgiZWghZWggZWgfZWgeZWgdZWgcZWgbZWgaZWgZZWgYZWgXZWgWZWgVZWgUZWgTZWgSZWgRZWgQZWgPZWgOZWgNZWgMZWgLZWgKZWgJZWgIZWgHZWgGZWgFZWgEZWgDZWgCZWgBZS4=",
        );
        assert_eq!(read(&bomb, 64 << 20), Err(PickleError::TooLarge { limit: 64 << 20 }));
        // Strings count by their length: 1000 references to one 1 MiB string are 1000 MiB.
        // As pickle.dumps(["x" * 2**20] * 1000, protocol=4) writes it.
        let mut big = vec![0x80, 4, b']', 0x94, b'(', b'X'];
        big.extend_from_slice(&(1u32 << 20).to_le_bytes());
        big.extend(std::iter::repeat_n(b'x', 1 << 20));
        big.push(0x94);
        big.extend(std::iter::repeat_n([b'h', 1], 999).flatten());
        big.extend_from_slice(b"e.");
        assert_eq!(read(&big, 64 << 20), Err(PickleError::TooLarge { limit: 64 << 20 }));
        assert!(matches!(read(&big, 2 << 30), Ok(PlainValue::List(items)) if items.len() == 1000));
    }

    #[test]
    fn reads_cloudpickle_samples() {
        // v3.9.1/resultstore-api/pickle-int: cloudpickle of 42.
        assert_eq!(read(&b64("gAVLKi4=\n"), SMALL).unwrap(), PlainValue::Int(42));
        // v2.20.25 compressed-pickle inner payload: [1, 2, 3].
        assert_eq!(
            read(&b64("gAWVCwAAAAAAAABdlChLAUsCSwNlLg=="), SMALL).unwrap(),
            PlainValue::List(vec![PlainValue::Int(1), PlainValue::Int(2), PlainValue::Int(3)])
        );
    }

    #[test]
    fn refuses_globals_and_reduce() {
        // pickle.dumps(uuid.UUID(int=1), 2) starts with GLOBAL-ish opcodes; a hand-made
        // `os.system('x')` pickle: c os\nsystem\n (S'x' tR.
        let evil = b"cos\nsystem\n(X\x01\x00\x00\x00xtR.";
        let err = read(evil, SMALL).unwrap_err();
        assert!(matches!(&err, PickleError::NotPlainData(m) if m.contains("os.system")), "{err}");
        let stack_global = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94.";
        assert!(matches!(read(stack_global, SMALL), Err(PickleError::NotPlainData(_))));
    }

    #[test]
    fn protocol_2_sets_and_bytes_are_read_from_the_fixed_table() {
        // pickle.dumps({1}, 2) and pickle.dumps(b'\x00\xff', 2)
        let set = b"\x80\x02c__builtin__\nset\nq\x00]q\x01K\x01a\x85q\x02Rq\x03.";
        assert_eq!(read(set, SMALL).unwrap(), PlainValue::Set(vec![PlainValue::Int(1)]));
        let bytes = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00\x00\xc3\xbfq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.";
        assert_eq!(read(bytes, SMALL).unwrap(), PlainValue::Bytes(vec![0, 0xff]));
        let not_called = b"\x80\x02c__builtin__\nset\n.";
        assert!(matches!(read(not_called, SMALL), Err(PickleError::NotPlainData(_))));
    }

    #[test]
    fn shared_references_see_later_mutation() {
        // pickle.dumps([a, a]) with a = [1]: the inner list is memoized before it is filled.
        let p = b"\x80\x05]\x94(]\x94K\x01ah\x01e.";
        let v = read(p, SMALL).unwrap();
        let inner = PlainValue::List(vec![PlainValue::Int(1)]);
        assert_eq!(v, PlainValue::List(vec![inner.clone(), inner]));
    }

    #[test]
    fn bounded_against_expansion_recursion_and_truncation() {
        // l = []; l.append(l)
        let recursive = b"\x80\x05]\x94h\x00a.";
        assert!(read(recursive, SMALL).is_err());
        // Each level doubles: 30 levels of [x, x] would be 2^30 nodes.
        let mut p = vec![0x80, 5, b'K', 1, 0x94];
        for i in 0..30u8 {
            p.extend_from_slice(&[b'h', i, b'h', i, 0x86, 0x94]);
        }
        p.push(b'.');
        assert_eq!(read(&p, 100_000), Err(PickleError::TooLarge { limit: 100_000 }));
        assert!(matches!(read(b"\x80\x05\x8c\x05ab", SMALL), Err(PickleError::Malformed(_))));
        assert!(matches!(read(b"", SMALL), Err(PickleError::Malformed(_))));
    }

    #[test]
    fn written_pickles_read_back() {
        let v = PlainValue::Dict(vec![
            (PlainValue::Str("a".into()), PlainValue::Int(1)),
            (PlainValue::Str("big".into()), PlainValue::BigInt("-1180591620717411303424".into())),
            (
                PlainValue::Str("l".into()),
                PlainValue::List(vec![
                    PlainValue::Float(2.5),
                    PlainValue::None,
                    PlainValue::Bool(true),
                    PlainValue::Int(70000),
                    PlainValue::Int(-5),
                    PlainValue::Int(1 << 40),
                ]),
            ),
            (PlainValue::Str("s".into()), PlainValue::Str("hé".repeat(200))),
            (PlainValue::Str("t".into()), PlainValue::Tuple(vec![PlainValue::Int(1)])),
        ]);
        assert_eq!(read(&write(&v).unwrap(), SMALL).unwrap(), v);
    }

    /// Found by `scripts/fuzz pickle_to_json`: a LONG4 of ten bytes holding a small int
    /// read as a big int, so it wrote back as a different value kind.
    #[test]
    fn a_long_padded_beyond_eight_bytes_reads_as_an_int() {
        let crash =
            include_bytes!("../../../fuzz/regressions/pickle_to_json/crash-9dd7eae1dc6aa4ca0376fbd5d227879b1f2a2710");
        let v = read(crash, SMALL).unwrap();
        assert_eq!(format!("{v:?}"), "Tuple([Int(1376256), Bool(false), Bool(false)])");
        let again = read(&write(&v).unwrap(), SMALL).unwrap();
        assert_eq!(format!("{again:?}"), format!("{v:?}"));
    }
}
