// A grid of avatars served by the API route next door.
const SEEDS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'];

export default function Home() {
  return (
    <main>
      <h1>Avatars from @avatar/node</h1>
      <p>
        Each image is <code>/api/avatar?seed=…</code>: a DCGAN written in Rust (burn), called from a
        Next.js route handler.
      </p>
      <div style={{ display: 'flex', flexWrap: 'wrap', gap: 12 }}>
        {SEEDS.map((seed) => (
          <figure key={seed} style={{ margin: 0, textAlign: 'center' }}>
            {/* eslint-disable-next-line @next/next/no-img-element */}
            <img
              className="avatar"
              src={`/api/avatar?seed=${seed}&size=large&transparent=true`}
              alt={`avatar for ${seed}`}
              width={128}
              height={128}
            />
            <figcaption>{seed}</figcaption>
          </figure>
        ))}
      </div>
    </main>
  );
}
