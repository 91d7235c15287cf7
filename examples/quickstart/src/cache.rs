//! finsight-cache: a typed read-through cache with the Python services'
//! presets, in memory (add the `redis` feature and `.redis(..)` for L2).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use finsight_cache::{Cache, CacheConfig, Layers};

/// (symbol, price): any serde type works; tuples need no derive.
type Quote = (String, f64);

pub async fn run() -> crate::Result {
    println!("== finsight-cache");
    // `trading_data`: prefix `trade:`, 60 s TTL, refresh-ahead at 20 % left.
    let quotes: Cache<Quote> =
        Cache::in_memory(CacheConfig::trading_data().with_layers(Layers::L1)).await?;

    // 64 concurrent misses of one key: the loader runs once.
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (quotes, loads) = (quotes.clone(), Arc::clone(&loads));
        tasks.push(tokio::spawn(async move {
            quotes
                .get_or_load("AAPL", move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await; // the database
                    Ok::<_, std::io::Error>(Some(("AAPL".to_owned(), 187.25)))
                })
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "64 concurrent get_or_load -> loader calls: {}",
        loads.load(Ordering::SeqCst)
    );

    // Write-through, read, delete.
    quotes.set("MSFT", &("MSFT".to_owned(), 411.0)).await?;
    println!("get MSFT -> {:?}", quotes.get("MSFT").await?);
    quotes.delete("MSFT").await?;
    println!("after delete -> {:?}", quotes.get("MSFT").await?);

    let s = quotes.stats();
    println!(
        "stats: l1 hits {} misses {}, loads {}, coalesced waits {}, hit rate {:.2}",
        s.l1.hits,
        s.l1.misses,
        s.loads,
        s.coalesced_waits,
        s.hit_rate()
    );
    Ok(())
}
