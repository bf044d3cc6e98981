//! Plain-text tables as `kubectl get` prints them: upper-case headers, columns padded to
//! their widest cell and separated by three spaces, `<none>`-free (empty cells print `-`).

/// Renders `rows` under `headers`; every line ends with a newline, trailing spaces trimmed.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let len = cell_text(cell).chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(len),
                None => widths.push(len),
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let text = cell_text(cell);
            line.push_str(text);
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0) - text.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cell_text(cell: &str) -> &str {
    if cell.is_empty() { "-" } else { cell }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let table = render(
            &["NAME", "STATE"],
            &[
                vec!["a-long-name".into(), "Ready".into()],
                vec!["b".into(), String::new()],
            ],
        );
        assert_eq!(
            table,
            "NAME          STATE\na-long-name   Ready\nb             -\n"
        );
    }
}
