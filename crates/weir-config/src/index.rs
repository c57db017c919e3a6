//! Where each YAML path sits in the source text.
//!
//! serde_yaml's `Value` forgets positions, so the file is also walked once with yaml-rust2's
//! marked event parser, recording the line of every key and every value under its path
//! (`sources[2].modbus.registers[4].type`). Error messages look the path up here; a path that is not
//! in the text (a missing field) falls back to its nearest ancestor that is.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// YAML path → 1-based line.
#[derive(Debug, Default, Clone)]
pub struct PathIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's position; `None` when the node
    /// is a mapping key.
    fn node_path(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    let p = join(path, &k);
                    self.lines.entry(p).or_insert(line);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(s, ..) => {
                if let Some(p) = self.node_path(Some(&s), line) {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.node_path(None, line) {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let p = self.node_path(None, line).unwrap_or_default();
                self.lines.entry(p.clone()).or_insert(line);
                self.stack.push(if is_map {
                    Frame::Map { path: p, key: None }
                } else {
                    Frame::Seq { path: p, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl PathIndex {
    /// Index `text`; a text that does not parse as YAML gives an empty index (serde_yaml reports
    /// the syntax error with its own position).
    pub fn build(text: &str) -> PathIndex {
        let mut b = Builder {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return PathIndex::default();
        }
        PathIndex { lines: b.lines }
    }

    /// The line of `path`, or of its nearest ancestor present in the text.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            if p.is_empty() {
                return None;
            }
            let cut = p.rfind(['.', '[']).unwrap_or(0);
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_sequence_items() {
        let text = "a: 1\nsources:\n  - sim:\n      devices: 3\n  - modbus:\n      registers:\n        - {name: x, type: f32}\n        - name: y\n          type: flaot\n";
        let ix = PathIndex::build(text);
        assert_eq!(ix.line_of("a"), Some(1));
        assert_eq!(ix.line_of("sources[0].sim.devices"), Some(4));
        assert_eq!(ix.line_of("sources[1].modbus.registers[0].type"), Some(7));
        assert_eq!(ix.line_of("sources[1].modbus.registers[1].type"), Some(9));
        // missing key falls back to the nearest ancestor
        assert_eq!(ix.line_of("sources[1].modbus.registers[1].scale"), Some(8));
    }
}
