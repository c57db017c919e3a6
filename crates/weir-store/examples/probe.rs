use std::path::Path;
use std::time::Duration;
use weir_store::*;
fn main() {
    let d = Path::new("/tmp/wsx");
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d).unwrap();
    let p = d.join("o.db");
    let l = Limits {
        max_bytes: 1000,
        max_age: Duration::from_secs(1),
        synchronous_full: true,
    };
    {
        let mut o = Outbox::open(&p, l).unwrap();
        o.append(|s| {
            vec![NewMessage {
                topic: format!("a/{}", s.next("a")),
                payload: vec![1],
                qos: 1,
                retain: false,
            }]
        })
        .unwrap();
    }
    println!(
        "after writer close: {:?}",
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    {
        let mut r = Outbox::open_read_only(&p).unwrap();
        println!("{:?}", r.stats().unwrap());
        println!("{r:?}");
        println!(
            "during ro: {:?}",
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
    }
    println!(
        "after ro close: {:?}",
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    std::fs::write(d.join("g.db"), b"garbage garbage").unwrap();
    println!("{}", Outbox::open(&d.join("g.db"), l).unwrap_err());
    println!(
        "{}",
        Outbox::open_read_only(&d.join("none.db")).unwrap_err()
    );
    println!("{}", Outbox::open(&d.join("x/none.db"), l).unwrap_err());
    println!(
        "{}",
        Outbox::open_read_only(&p)
            .unwrap()
            .delete(&[1])
            .unwrap_err()
    );
}
