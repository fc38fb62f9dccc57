use super::filter::SIGNATURE;
use super::*;
use crate::source::pgoutput::build::{text, text_relation};

fn new_fold() -> Fold {
    Fold::new(&object(), &schema(20), &std::env::temp_dir()).unwrap()
}

/// Every chunk's lines, sorted.
/// The final rows of every part, sorted.
fn final_lines(parts: Vec<FinalRows>) -> Vec<String> {
    let mut all: Vec<String> = parts
        .into_iter()
        .flat_map(|mut part| lines(move || part.next_chunk()))
        .collect();
    all.sort();
    all
}

fn lines(mut next: impl FnMut() -> std::io::Result<Option<Bytes>>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(chunk) = next().unwrap() {
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

fn schema(key_oid: u32) -> TableSchema {
    crate::source::schema::test_table("t", &[("id", key_oid), ("v", 25)], &["id"])
}

fn object() -> TableObject {
    TableObject {
        table: "public.t".parse().unwrap(),
        key: "k".into(),
        columns: vec!["id".into(), "v".into()],
        size: 0,
        sha256: String::new(),
        raw_size: 0,
    }
}

fn row(id: &str, v: &str) -> Tuple {
    Tuple(vec![text(id), text(v)])
}

/// A binary COPY stream of (bigint id, text v) rows.
fn snapshot(rows: &[(i64, &str)]) -> Vec<u8> {
    let mut data = SIGNATURE.to_vec();
    data.extend_from_slice(&[0; 8]);
    for (id, v) in rows {
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&8i32.to_be_bytes());
        data.extend_from_slice(&id.to_be_bytes());
        data.extend_from_slice(&(v.len() as i32).to_be_bytes());
        data.extend_from_slice(v.as_bytes());
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}

fn filtered(filter: &mut SnapshotFilter, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        filter.push(piece, &mut out).unwrap();
    }
    out
}

#[test]
fn touched_keys_leave_the_snapshot_and_their_final_rows_follow() {
    let mut fold = new_fold();
    fold.update(None, &row("2", "two, later")).unwrap();
    fold.delete(&row("3", "")).unwrap();
    fold.insert(&row("9", "new\tone")).unwrap();
    fold.insert(&row("10", "gone")).unwrap();
    fold.delete(&row("10", "")).unwrap();
    let old = OldTuple::Key(row("4", ""));
    fold.update(Some(&old), &row("40", "moved")).unwrap();
    let (mut filter, rows) = fold.into_parts();
    assert_eq!(
        final_lines(rows),
        ["2\ttwo, later", "40\tmoved", "9\tnew\\tone"]
    );

    let data = snapshot(&[
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
        (-5, "five"),
    ]);
    // Any chunking gives the same stream: rows straddle chunks.
    for chunk in [1, 3, 7, data.len()] {
        let (mut again, _) = {
            let mut fold = new_fold();
            fold.update(None, &row("2", "x")).unwrap();
            fold.delete(&row("3", "")).unwrap();
            fold.delete(&row("4", "")).unwrap();
            fold.into_parts()
        };
        assert_eq!(
            filtered(&mut again, &data, chunk),
            snapshot(&[(1, "one"), (-5, "five")]),
            "chunks of {chunk}"
        );
        assert_eq!(again.finish(), Ok(5));
    }
    assert_eq!(
        filtered(&mut filter, &data, 4),
        snapshot(&[(1, "one"), (-5, "five")])
    );
}

#[test]
fn memory_follows_the_keys_touched_not_the_changes() {
    let mut fold = new_fold();
    let value = |round: usize, key: usize| format!("{round}:{key}:{}", "x".repeat(200));
    // 40 MiB of row versions over 1,000 keys, some deleted and back.
    for round in 0..200 {
        for key in 0..1000 {
            let id = key.to_string();
            fold.update(None, &row(&id, &value(round, key))).unwrap();
            if key % 7 == round % 7 {
                fold.delete(&row(&id, "")).unwrap();
            }
        }
        assert!(fold.bytes() < 8 << 20, "{} bytes held", fold.bytes());
    }
    let (_, rows) = fold.into_parts();
    let mut expected: Vec<String> = (0..1000)
        .filter(|key| key % 7 != 199 % 7)
        .map(|key| format!("{key}\t{}", value(199, key)))
        .collect();
    expected.sort();
    assert_eq!(final_lines(rows), expected);
}

#[test]
fn spilled_rows_read_back_as_each_key_ends() {
    for key_oid in [20, 2950] {
        let id = |n: usize| match key_oid {
            20 => n.to_string(),
            _ => format!("00000000-0000-0000-0000-{n:012}"),
        };
        let object = TableObject {
            columns: vec!["v".into(), "id".into()],
            ..object()
        };
        let schema = schema(key_oid);
        let mut fold = Fold::new(&object, &schema, &std::env::temp_dir()).unwrap();
        let row = |n: usize, v: &str| Tuple(vec![text(v), text(&id(n))]);
        for n in 0..300 {
            fold.insert(&row(n, "first")).unwrap();
        }
        fold.spill().unwrap();
        assert!(fold.spillable() == 0 && !fold.is_empty());
        // Files we write are 0600, and a spill file has no name to find it by.
        let spilled = fold.spills[0].0.metadata().unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&spilled.permissions()) & 0o777,
            0o600
        );
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&spilled), 0);
        for n in (0..300).step_by(2) {
            fold.update(None, &row(n, "second")).unwrap();
        }
        fold.spill().unwrap();
        for n in (0..300).step_by(3) {
            fold.update(None, &row(n, "third")).unwrap();
        }
        for n in (0..300).step_by(5) {
            fold.delete(&row(n, "")).unwrap();
        }
        // Held, in the second spill, in the first, or deleted.
        let last = |n: usize| match n {
            n if n % 5 == 0 => None,
            n if n % 3 == 0 => Some("third"),
            n if n % 2 == 0 => Some("second"),
            _ => Some("first"),
        };
        let mut expected: Vec<String> = (0..300)
            .filter_map(|n| Some(format!("{}\t{}", last(n)?, id(n))))
            .collect();
        expected.sort();
        let mut stage = NetStage::new("s".into(), &object.columns, vec![1]);
        let mut staged = fold.into_stage(&mut stage);
        let staged = lines(|| staged.next_chunk());
        let (updated, deleted): (Vec<_>, Vec<_>) =
            staged.iter().partition(|l| l.starts_with("1\tu\t\t"));
        assert_eq!(deleted.len(), 60, "{key_oid}: {deleted:?}");
        assert!(deleted.contains(&&format!("1\td\t\t\\N\t{}", id(5))));
        let mut updated: Vec<String> = updated.iter().map(|l| l[5..].to_string()).collect();
        updated.sort();
        assert_eq!(updated, expected, "{key_oid}");
    }
}

#[test]
fn many_final_rows_load_in_parts() {
    let mut fold = new_fold();
    let value = "v".repeat(300);
    for key in 0..40_000 {
        fold.insert(&row(&key.to_string(), &value)).unwrap();
    }
    let (_, parts) = fold.into_parts();
    assert_eq!(parts.len(), 2, "12 MiB of rows in parts of 8");
    let lines = final_lines(parts);
    assert_eq!(lines.len(), 40_000);
    assert_eq!(lines[0], format!("0\t{value}"));
}

#[test]
fn what_a_fold_cannot_take_is_refused() {
    let mut fold = new_fold();
    let toast = Tuple(vec![text("1"), TupleValue::UnchangedToast]);
    assert_eq!(fold.update(None, &toast), Err(NotFoldable));
    assert!(
        Fold::new(&object(), &schema(25), &std::env::temp_dir()).is_none(),
        "text keys are not compared"
    );
    let relation = text_relation(&[("id", true), ("v", false)], b'd');
    assert!(fold.fits(&relation));
    let other = text_relation(&[("id", true), ("w", false)], b'd');
    let full = text_relation(&[("id", true), ("v", false)], b'f');
    assert!(!fold.fits(&other) && !fold.fits(&full));
}

#[test]
fn a_loaded_fold_stages_as_one_flush() {
    let mut fold = new_fold();
    fold.insert(&row("1", "a")).unwrap();
    fold.delete(&row("2", "")).unwrap();
    let mut stage = fold.stage("s".into());
    let mut staged = fold.into_stage(&mut stage);
    assert_eq!(
        lines(|| staged.next_chunk()),
        ["1\td\t\t2\t\\N", "1\tu\t\t1\ta"]
    );
}

#[test]
fn keys_print_as_the_server_prints_them() {
    let mut out = Vec::new();
    KeyType::Int2
        .print(&(-7i16).to_be_bytes(), &mut out)
        .unwrap();
    out.push(b' ');
    KeyType::Int4
        .print(&i32::MIN.to_be_bytes(), &mut out)
        .unwrap();
    out.push(b' ');
    KeyType::Uuid
        .print(
            &hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap(),
            &mut out,
        )
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "-7 -2147483648 a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert!(KeyType::Int8.print(&[1, 2], &mut Vec::new()).is_err());
}

#[test]
fn broken_streams_are_named_not_passed_on() {
    let (mut filter, _) = new_fold().into_parts();
    let mut out = Vec::new();
    assert!(filter
        .push(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", &mut out)
        .is_err());
    let (mut filter, _) = new_fold().into_parts();
    let data = snapshot(&[(1, "one")]);
    filter.push(&data[..data.len() - 4], &mut out).unwrap();
    assert!(filter.finish().is_err(), "a row cut short");
    let (mut filter, _) = new_fold().into_parts();
    let mut trailing = data.clone();
    trailing.extend_from_slice(&[0, 1]);
    assert!(filter.push(&trailing, &mut Vec::new()).is_err());
}
