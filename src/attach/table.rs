//! Finding the storage manager dispatch table among a region's words. Pure
//! logic, so it can be tested against synthetic memory.

/// md.c's functions by name and address: the three slots to replace
/// (read, write, extend in the version's shape) and their neighbours.
pub struct MdSymbols {
    pub read: (&'static str, usize),
    pub write: (&'static str, usize),
    pub extend: (&'static str, usize),
    /// Functions that must sit in the same table, each exactly once.
    pub required_neighbours: Vec<(&'static str, usize)>,
    /// Functions that may sit in the table.
    pub optional_neighbours: Vec<usize>,
}

/// Word indexes of the slots to replace.
#[derive(Debug, PartialEq, Eq)]
pub struct TableMatch {
    pub read: usize,
    pub write: usize,
    pub extend: usize,
}

fn only_index(words: &[usize], value: usize, name: &str) -> Result<usize, String> {
    let mut found = words
        .iter()
        .enumerate()
        .filter(|(_, w)| **w == value)
        .map(|(i, _)| i);
    match (found.next(), found.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => Err(format!("no dispatch table slot holds {name}")),
        (Some(_), Some(_)) => Err(format!(
            "{name} appears more than once in read-only relocated data"
        )),
    }
}

/// Requires exactly one slot each for the read, write and extend functions,
/// all in one contiguous run of words that are NULL or md* functions, and
/// every required neighbour exactly once in that run.
pub fn locate(words: &[usize], md: &MdSymbols) -> Result<TableMatch, String> {
    let read = only_index(words, md.read.1, md.read.0)?;
    let write = only_index(words, md.write.1, md.write.0)?;
    let extend = only_index(words, md.extend.1, md.extend.0)?;
    let is_md = |w: usize| {
        w == 0
            || w == md.read.1
            || w == md.write.1
            || w == md.extend.1
            || md.required_neighbours.iter().any(|(_, a)| *a == w)
            || md.optional_neighbours.contains(&w)
    };
    let mut start = read;
    while start > 0 && is_md(words[start - 1]) {
        start -= 1;
    }
    let mut end = read + 1;
    while end < words.len() && is_md(words[end]) {
        end += 1;
    }
    let run = start..end;
    if !run.contains(&write) || !run.contains(&extend) {
        return Err(format!(
            "{}, {} and {} are not in one dispatch table",
            md.read.0, md.write.0, md.extend.0
        ));
    }
    for (name, addr) in &md.required_neighbours {
        let count = words[run.clone()].iter().filter(|w| **w == *addr).count();
        if count != 1 {
            return Err(format!(
                "the dispatch table holding {} has {count} slots for {name} (expected 1)",
                md.read.0
            ));
        }
    }
    Ok(TableMatch {
        read,
        write,
        extend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms() -> MdSymbols {
        MdSymbols {
            read: ("mdread", 0x1010),
            write: ("mdwrite", 0x1020),
            extend: ("mdextend", 0x1030),
            required_neighbours: vec![("mdnblocks", 0x1040), ("mdclose", 0x1050)],
            optional_neighbours: vec![0x1060],
        }
    }

    #[test]
    fn finds_pg15_like_table() {
        // init, NULL, open, close, …, read, write, …
        let words = [7, 0x1060, 0, 0x1050, 0x1030, 0x1010, 0x1020, 0x1040, 9];
        assert_eq!(
            locate(&words, &syms()).unwrap(),
            TableMatch {
                read: 5,
                write: 6,
                extend: 4
            }
        );
    }

    #[test]
    fn refuses_missing_duplicate_or_split() {
        assert!(locate(&[0x1010, 0x1020], &syms())
            .unwrap_err()
            .contains("mdextend"));
        let dup = [0x1010, 0x1020, 0x1030, 0x1040, 0x1050, 5, 0x1010];
        assert!(locate(&dup, &syms())
            .unwrap_err()
            .contains("more than once"));
        let split = [0x1010, 0x1040, 0x1050, 5, 0x1020, 0x1030];
        assert!(locate(&split, &syms()).unwrap_err().contains("not in one"));
        let no_neighbour = [0x1010, 0x1020, 0x1030, 0x1050];
        assert!(locate(&no_neighbour, &syms())
            .unwrap_err()
            .contains("mdnblocks"));
    }
}
